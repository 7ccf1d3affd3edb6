//! Whole text-to-image runs against diffusers (`refs.safetensors`): 20 steps, guidance 5, 64x64,
//! from `init_latents`, for Euler, DDIM and DPM++ 2M and prompts 1..3, f32 weights; and from
//! `more_refs.safetensors`, Euler with a negative prompt (`euler_negative`) and without
//! classifier-free guidance (`euler_nocfg`, guidance 1.0), step by step.

mod common;

use std::sync::{Arc, OnceLock};

use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_kernels::{ContextOptions, DType, GpuContext};
use sd_models::{Inputs, ModelSource, StableDiffusion};

use common::{fixtures, max_abs_diff, more_refs, reference, tensor};

/// The digits model, shared by every test of this file; the harness runs them on parallel
/// threads, which `concurrent_generations_agree_with_serial_ones` shows is safe.
fn model() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| {
        let options = ContextOptions::for_tests().expect("valid environment");
        let ctx = Arc::new(pollster::block_on(GpuContext::new(options)).expect("a GPU adapter"));
        let source = ModelSource::folder(fixtures().join("tiny-sd-digits"));
        StableDiffusion::load(ctx, &source, DType::F32).expect("load the digits model")
    })
}

const PROMPTS: [&str; 3] = [
    "a red digit seven on a blue background",
    "a white digit three on a black background",
    "a yellow digit zero on a green background",
];

#[test]
fn whole_runs_match_diffusers_for_three_samplers_and_prompts() {
    let init = reference("init_latents");
    for sampler in ["euler", "ddim", "dpmpp_2m"] {
        for (i, prompt) in PROMPTS.iter().enumerate() {
            let params = GenerationParams {
                prompt: prompt.to_string(),
                steps: 20,
                guidance_scale: 5.0,
                sampler: SamplerKind::parse(sampler).expect("known sampler"),
                width: 64,
                height: 64,
                ..GenerationParams::default()
            };
            let mut trajectory = Vec::new();
            let mut on_step = |_: usize, latents: &[f32]| trajectory.extend_from_slice(latents);
            let out = pollster::block_on(model().generate(
                &params,
                &Inputs {
                    initial_latents: Some(&init),
                    ..Inputs::default()
                },
                &mut |_| {},
                Some(&mut on_step),
            ))
            .expect("generate");
            let n = i + 1;
            let err = max_abs_diff(
                &out.latents[0],
                &reference(&format!("{sampler}_{n}_latents")),
            );
            println!("{sampler} prompt {n}: final latents max abs error {err:e}");
            assert!(
                err <= 1e-3,
                "{sampler} prompt {n}: final latents {err:e} > 1e-3"
            );
            if n == 1 {
                let want = reference(&format!("{sampler}_1_trajectory"));
                for (step, (got, want)) in trajectory.chunks(256).zip(want.chunks(256)).enumerate()
                {
                    let err = max_abs_diff(got, want);
                    assert!(err <= 1e-3, "{sampler} step {step}: {err:e} > 1e-3");
                }
            }
            let image = reference(&format!("{sampler}_{n}_image"));
            let close = out.pixels[0]
                .iter()
                .zip(&image)
                .filter(|(a, b)| (*a - *b).abs() <= 2.0 / 255.0)
                .count();
            let share = close as f64 / image.len() as f64;
            println!(
                "{sampler} prompt {n}: {:.2} % of image values within 2/255",
                100.0 * share
            );
            assert!(
                share >= 0.99,
                "{sampler} prompt {n}: only {:.2} % within 2/255",
                100.0 * share
            );
        }
    }
}

/// A 20-step Euler run of `more_refs.json`'s `run` from `init_latents`: every step's output
/// (`<run>_step_prev_sample`, seen through `on_step`) and the final latents (the last step's
/// output; diffusers' Euler returns it unchanged) within 1e-3, and the image within 2/255.
fn euler_run_matches(run: &str, prompt: &str, negative_prompt: &str, guidance_scale: f32) {
    let params = GenerationParams {
        prompt: prompt.to_string(),
        negative_prompt: negative_prompt.to_string(),
        steps: 20,
        guidance_scale,
        sampler: SamplerKind::EULER,
        width: 64,
        height: 64,
        ..GenerationParams::default()
    };
    let mut steps: Vec<Vec<f32>> = Vec::new();
    let mut on_step = |step: usize, latents: &[f32]| {
        assert_eq!(step, steps.len(), "steps are observed in order");
        steps.push(latents.to_vec());
    };
    let out = pollster::block_on(model().generate(
        &params,
        &Inputs {
            initial_latents: Some(&reference("init_latents")),
            ..Inputs::default()
        },
        &mut |_| {},
        Some(&mut on_step),
    ))
    .expect("generate");

    let want = tensor(more_refs(), &format!("{run}_step_prev_sample"));
    assert_eq!(
        want.len(),
        20 * 256,
        "{run}: 20 recorded steps of [4, 8, 8]"
    );
    assert_eq!(steps.len(), 20, "{run}: 20 steps observed");
    let mut worst = (0.0f32, 0);
    for (step, (got, want)) in steps.iter().zip(want.chunks(256)).enumerate() {
        let err = max_abs_diff(got, want);
        if err > worst.0 {
            worst = (err, step);
        }
        assert!(err <= 1e-3, "{run} step {step}: prev_sample {err:e} > 1e-3");
    }
    println!(
        "{run}: every step's prev_sample within {:e} (worst at step {})",
        worst.0, worst.1
    );

    let final_want = &want[19 * 256..];
    assert_eq!(
        out.latents[0], steps[19],
        "{run}: the final latents are the last step's output"
    );
    let err = max_abs_diff(&out.latents[0], final_want);
    println!("{run}: final latents max abs error {err:e}");
    assert!(err <= 1e-3, "{run}: final latents {err:e} > 1e-3");

    let image = tensor(more_refs(), &format!("{run}_image"));
    let close = out.pixels[0]
        .iter()
        .zip(&image)
        .filter(|(a, b)| (*a - *b).abs() <= 2.0 / 255.0)
        .count();
    let share = close as f64 / image.len() as f64;
    println!("{run}: {:.2} % of image values within 2/255", 100.0 * share);
    assert!(
        share >= 0.99,
        "{run}: only {:.2} % within 2/255",
        100.0 * share
    );
}

/// Prompt 2 with prompt 1 as the negative prompt: the negative prompt's hidden states, not the
/// empty prompt's, are the unconditional half of guidance.
#[test]
fn euler_negative() {
    euler_run_matches("euler_negative", PROMPTS[1], PROMPTS[0], 5.0);
}

/// Guidance 1.0: diffusers runs no unconditional pass (batch 1, the prediction used as is).
#[test]
fn euler_nocfg() {
    euler_run_matches("euler_nocfg", PROMPTS[0], "", 1.0);
}

/// Two generations at once on one model (one `GpuContext`) must give what each gives alone:
/// the model is `Sync`, so a server may share it between requests. (Before batches took the
/// context's recording lock, a pooled buffer freed while one thread recorded was handed to the
/// other thread's batch, which could be submitted first and was then overwritten.)
#[test]
fn concurrent_generations_agree_with_serial_ones() {
    let options = ContextOptions::for_tests().expect("valid environment");
    let ctx = Arc::new(pollster::block_on(GpuContext::new(options)).expect("a GPU adapter"));
    let source = ModelSource::folder(fixtures().join("tiny-sd-digits"));
    let model = StableDiffusion::load(ctx, &source, DType::F32).expect("load the digits model");
    let init = reference("init_latents");
    let requests: Vec<GenerationParams> = [(0, 5.0), (1, 1.0)]
        .into_iter()
        .map(|(prompt, guidance_scale)| GenerationParams {
            prompt: PROMPTS[prompt].to_string(),
            steps: 10,
            guidance_scale,
            sampler: SamplerKind::EULER,
            width: 64,
            height: 64,
            ..GenerationParams::default()
        })
        .collect();
    let run = |params: &GenerationParams| {
        pollster::block_on(model.generate(
            params,
            &Inputs {
                initial_latents: Some(&init),
                ..Inputs::default()
            },
            &mut |_| {},
            None,
        ))
        .expect("generate")
        .latents
        .remove(0)
    };
    let alone: Vec<Vec<f32>> = requests.iter().map(run).collect();
    let together: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|params| s.spawn(move || run(params)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        let err = max_abs_diff(t, a);
        println!("request {i}: concurrent vs alone max abs difference {err:e}");
        assert!(
            err <= 1e-6,
            "request {i}: concurrent run differs by {err:e}"
        );
    }
}

/// Sizes other than the model's native 64x64 work: 96x64 (12x8 latents, odd multiples through
/// the UNet's down and up blocks) gives an image of that size with real content.
#[test]
fn a_non_native_size_generates_an_image_of_that_size() {
    let params = GenerationParams {
        prompt: PROMPTS[0].to_string(),
        steps: 4,
        guidance_scale: 5.0,
        width: 96,
        height: 64,
        seed: 11,
        ..GenerationParams::default()
    };
    let out = pollster::block_on(model().generate(&params, &Inputs::default(), &mut |_| {}, None))
        .expect("generate");
    assert_eq!((out.width, out.height), (96, 64));
    assert_eq!(out.images[0].len(), 96 * 64 * 3);
    assert_eq!(out.latents[0].len(), 4 * 8 * 12);
    let pixels = &out.pixels[0];
    assert!(pixels.iter().all(|v| v.is_finite()));
    let mean = pixels.iter().sum::<f32>() / pixels.len() as f32;
    let spread = pixels.iter().map(|v| (v - mean).abs()).sum::<f32>() / pixels.len() as f32;
    assert!(
        spread > 0.05,
        "the image is flat: mean abs deviation {spread}"
    );
}
