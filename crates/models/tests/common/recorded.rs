//! diffusers' recorded runs replayed through a pipeline on any backend: text-to-image
//! (`refs.safetensors`), img2img and inpainting (`more_refs.safetensors`,
//! `tiny-arch/inpaint9-refs.safetensors`). The recorded start noise goes in as
//! `initial_latents`, and every recorded step, the final latents and the image are compared.

// Only the pipeline tests (GPU and CPU) use these; every other binary that includes `common` does not.
#![allow(dead_code)]

use image::{GrayImage, Luma};
use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_models::{Inputs, StableDiffusion};
use sd_weights::SafetensorsFile;

use super::{
    assert_run_matches, fixture_mask, fixtures, input_image, max_abs_diff, more_refs, reference,
    run, tensor,
};

/// A white square over pixels `from..to` both ways on black, 64x64.
pub fn square_mask(from: u32, to: u32) -> GrayImage {
    GrayImage::from_fn(64, 64, |x, y| {
        let inside = (from..to).contains(&x) && (from..to).contains(&y);
        Luma([if inside { 255 } else { 0 }])
    })
}

/// The prompts of `refs.safetensors`' text-to-image runs `<sampler>_<n>` (n = 1..3).
pub const PROMPTS: [&str; 3] = [
    "a red digit seven on a blue background",
    "a white digit three on a black background",
    "a yellow digit zero on a green background",
];

/// diffusers' text-to-image run `<sampler>_<n>` (20 steps, guidance 5, 64x64, from
/// `init_latents`): the final latents within 1e-3 and 99 % of the image within 2/255; for
/// prompt 1, whose trajectory was recorded, every step within 1e-3 too.
pub fn text_to_image(model: &StableDiffusion, label: &str, sampler: &str, n: usize) {
    let init = reference("init_latents");
    let (out, steps) = run(
        model,
        &params(PROMPTS[n - 1], sampler, 1.0),
        &Inputs {
            initial_latents: Some(&init),
            ..Inputs::default()
        },
    );
    let trajectory = (n == 1).then(|| reference(&format!("{sampler}_1_trajectory")));
    let want_steps: Vec<&[f32]> = trajectory.iter().flat_map(|t| t.chunks(256)).collect();
    if trajectory.is_some() {
        assert_eq!(
            steps.len(),
            want_steps.len(),
            "{label} {sampler}_{n}: steps"
        );
    }
    assert_run_matches(
        &format!("{label} {sampler}_{n}"),
        &out,
        &steps,
        &want_steps,
        &reference(&format!("{sampler}_{n}_latents")),
        &reference(&format!("{sampler}_{n}_image")),
    );
}

/// A 20-step Euler run of `more_refs.json`'s `run` from `init_latents`: every step's output
/// (`<run>_step_prev_sample`, seen through `on_step`) and the final latents (the last step's
/// output; diffusers' Euler returns it unchanged) within 1e-3, and the image within 2/255.
pub fn euler_steps(
    model: &StableDiffusion,
    run: &str,
    prompt: &str,
    negative_prompt: &str,
    guidance_scale: f32,
) {
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
    let out = pollster::block_on(model.generate(
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

/// 20 steps at guidance 5 and 64x64, as the recorded runs were made.
pub fn params(prompt: &str, sampler: &str, strength: f32) -> GenerationParams {
    GenerationParams {
        prompt: prompt.into(),
        steps: 20,
        guidance_scale: 5.0,
        sampler: SamplerKind::parse(sampler).expect("a known sampler"),
        width: 64,
        height: 64,
        strength,
        ..GenerationParams::default()
    }
}

/// The recorded img2img run `run_name` (the red 7 on blue repainted as a yellow 0 on green):
/// `calls` UNet calls, each step's output within 1e-3, the image within 2/255.
pub fn img2img(
    model: &StableDiffusion,
    run_name: &str,
    sampler: &str,
    strength: f32,
    calls: usize,
) {
    let image = input_image();
    let noise = tensor(more_refs(), &format!("{run_name}_noise"));
    let p = params(
        "a yellow digit zero on a green background",
        sampler,
        strength,
    );
    let (out, steps) = run(
        model,
        &p,
        &Inputs {
            initial_latents: Some(&noise),
            init_image: Some(&image),
            mask: None,
        },
    );
    let want = tensor(more_refs(), &format!("{run_name}_step_prev_sample"));
    assert_eq!(steps.len(), calls, "{run_name}: steps run");
    let want_steps: Vec<&[f32]> = want.chunks(256).collect();
    assert_run_matches(
        run_name,
        &out,
        &steps,
        &want_steps,
        &want[want.len() - 256..],
        &tensor(more_refs(), &format!("{run_name}_image")),
    );
}

/// Legacy inpainting (a 4-channel UNet): diffusers records each step's output before it blends
/// the known region back, and each next step's input after; the final latents are the last
/// output blended with the image's own latents.
pub fn inpaint_four_channels(model: &StableDiffusion) {
    let image = input_image();
    let mask = fixture_mask();
    let noise = tensor(more_refs(), "inpaint_euler_noise");
    let p = params("a white digit three on a black background", "euler", 1.0);
    let (out, steps) = run(
        model,
        &p,
        &Inputs {
            initial_latents: Some(&noise),
            init_image: Some(&image),
            mask: Some(&mask),
        },
    );
    let before_blend = tensor(more_refs(), "inpaint_euler_step_prev_sample");
    let inputs = tensor(more_refs(), "inpaint_euler_step_sample");
    assert_eq!(steps.len(), 20);
    // Our step output is after the blend: diffusers' next step input (steps 0..19). After the
    // last step: (1 - m) * image latents + m * output, m on the 8x8 grid.
    let want_steps: Vec<&[f32]> = inputs.chunks(256).skip(1).collect();
    let x0 = tensor(more_refs(), "img2img_input_latents");
    let m = sd_models::image_input::latent_mask(&mask, true);
    let last = &before_blend[19 * 256..];
    let want_final: Vec<f32> = (0..256)
        .map(|i| (1.0 - m[i % 64]) * x0[i] + m[i % 64] * last[i])
        .collect();
    assert_run_matches(
        "inpaint_euler",
        &out,
        &steps,
        &want_steps,
        &want_final,
        &tensor(more_refs(), "inpaint_euler_image"),
    );
}

/// A 9-channel inpainting UNet (`model`: `tiny-arch/inpaint9`) takes the mask and the masked
/// image's latents as input channels; diffusers' 20-step run from given latents.
pub fn inpaint_nine_channels(model: &StableDiffusion) {
    let refs = SafetensorsFile::read(&fixtures().join("tiny-arch/inpaint9-refs.safetensors"))
        .expect("inpaint9 refs");
    let init = tensor(&refs, "init_latents");
    let image = input_image();
    let mask = square_mask(8, 56);
    let p = params("a white digit three on a black background", "euler", 1.0);
    let (out, steps) = run(
        model,
        &p,
        &Inputs {
            initial_latents: Some(&init),
            init_image: Some(&image),
            mask: Some(&mask),
        },
    );
    let want = tensor(&refs, "run_trajectory");
    assert_eq!(steps.len(), 20);
    let want_steps: Vec<&[f32]> = want.chunks(256).collect();
    assert_run_matches(
        "inpaint9",
        &out,
        &steps,
        &want_steps,
        &want[19 * 256..],
        &tensor(&refs, "run_image"),
    );
}
