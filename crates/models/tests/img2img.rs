//! img2img and inpainting against diffusers (`more_refs.safetensors`, `tiny-arch/inpaint9`):
//! the recorded start noise goes in as `initial_latents`, every step and the final latents are
//! compared; and the batched path against one image at a time.

mod common;

use std::sync::OnceLock;

use image::{GrayImage, Luma};
use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_kernels::DType;
use sd_models::{Inputs, ModelSource, StableDiffusion};
use sd_weights::SafetensorsFile;

use common::{
    assert_run_matches, context, fixture_mask, fixtures, input_image, max_abs_diff, more_refs, run,
    tensor,
};

fn load(folder: &str) -> StableDiffusion {
    let source = ModelSource::folder(fixtures().join(folder));
    StableDiffusion::load(context(), &source, DType::F32)
        .unwrap_or_else(|e| panic!("load {folder}: {e}"))
}

/// The digits model with f32 weights, shared by the tests of this file.
fn digits() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| load("tiny-sd-digits"))
}

/// A white square over pixels `from..to` both ways on black, 64x64.
fn square_mask(from: u32, to: u32) -> GrayImage {
    GrayImage::from_fn(64, 64, |x, y| {
        let inside = (from..to).contains(&x) && (from..to).contains(&y);
        Luma([if inside { 255 } else { 0 }])
    })
}

fn sampler(name: &str) -> SamplerKind {
    SamplerKind::parse(name).expect("a known sampler")
}

fn params(prompt: &str, sampler: SamplerKind, strength: f32) -> GenerationParams {
    GenerationParams {
        prompt: prompt.into(),
        steps: 20,
        guidance_scale: 5.0,
        sampler,
        width: 64,
        height: 64,
        strength,
        ..GenerationParams::default()
    }
}

#[test]
fn img2img_matches_diffusers_euler_and_ddim() {
    let image = input_image();
    for (run_name, sampler, strength, calls) in [
        ("img2img_euler_s05", sampler("euler"), 0.5, 10),
        ("img2img_ddim_s08", sampler("ddim"), 0.8, 16),
    ] {
        let noise = tensor(more_refs(), &format!("{run_name}_noise"));
        let p = params(
            "a yellow digit zero on a green background",
            sampler,
            strength,
        );
        let (out, steps) = run(
            digits(),
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
}

/// Legacy inpainting (a 4-channel UNet): diffusers records each step's output before it blends
/// the known region back, and each next step's input after; the final latents are the last
/// output blended with the image's own latents.
#[test]
fn inpainting_matches_diffusers_with_a_four_channel_unet() {
    let image = input_image();
    let mask = fixture_mask();
    let noise = tensor(more_refs(), "inpaint_euler_noise");
    let p = params(
        "a white digit three on a black background",
        sampler("euler"),
        1.0,
    );
    let (out, steps) = run(
        digits(),
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

/// A 9-channel inpainting UNet (`tiny-arch/inpaint9`) takes the mask and the masked image's
/// latents as input channels; diffusers' 20-step run from given latents.
#[test]
fn inpainting_matches_diffusers_with_a_nine_channel_unet() {
    let model = load("tiny-arch/inpaint9");
    let refs = SafetensorsFile::read(&fixtures().join("tiny-arch/inpaint9-refs.safetensors"))
        .expect("inpaint9 refs");
    let init = tensor(&refs, "init_latents");
    let image = input_image();
    let mask = square_mask(8, 56);
    let p = params(
        "a white digit three on a black background",
        sampler("euler"),
        1.0,
    );
    let (out, steps) = run(
        &model,
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

/// Strength 0 runs no step: the output is the input through the VAE (encode, decode).
#[test]
fn strength_zero_gives_the_input_back_through_the_vae() {
    let image = input_image();
    let p = params(
        "a yellow digit zero on a green background",
        sampler("euler"),
        0.0,
    );
    let (out, steps) = run(
        digits(),
        &p,
        &Inputs {
            init_image: Some(&image),
            ..Inputs::default()
        },
    );
    assert!(steps.is_empty(), "no step runs at strength 0");
    let diffs: Vec<f32> = out.images[0]
        .iter()
        .zip(image.as_raw())
        .map(|(a, b)| (f32::from(*a) - f32::from(*b)).abs() / 255.0)
        .collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let max = diffs.iter().copied().fold(0.0, f32::max);
    println!("strength 0: VAE round trip mean abs {mean:.4}, max {max:.4}");
    assert!(mean <= 0.05, "strength 0: mean abs difference {mean}");
}

/// Images batched through the UNet together equal the same seeds generated one at a time.
#[test]
fn a_batch_equals_its_images_generated_alone() {
    let image = input_image();
    let mut p = params(
        "a red digit seven on a blue background",
        sampler("euler_a"),
        0.6,
    );
    p.steps = 6;
    p.seed = 11;
    p.count = 3;
    let inputs = Inputs {
        init_image: Some(&image),
        ..Inputs::default()
    };
    assert_eq!(
        digits().images_per_unet_call(64, 64, true, 3),
        3,
        "the three images go through the UNet together"
    );
    let batched =
        pollster::block_on(digits().generate(&p, &inputs, &mut |_| {}, None)).expect("batched");
    assert_eq!(batched.seeds, vec![11, 12, 13]);
    for (i, latents) in batched.latents.iter().enumerate() {
        let alone = GenerationParams {
            seed: 11 + i as u64,
            count: 1,
            ..p.clone()
        };
        let single = pollster::block_on(digits().generate(&alone, &inputs, &mut |_| {}, None))
            .expect("alone");
        let err = max_abs_diff(latents, &single.latents[0]);
        println!("batch image {i}: max abs difference to alone {err:e}");
        assert!(err <= 1e-4, "image {i}: {err:e}");
    }
    assert_ne!(batched.latents[0], batched.latents[1], "seeds differ");
}

#[test]
fn a_mask_without_an_input_image_is_refused() {
    let mask = square_mask(8, 56);
    let p = params("x", sampler("euler"), 1.0);
    let err = pollster::block_on(digits().generate(
        &p,
        &Inputs {
            mask: Some(&mask),
            ..Inputs::default()
        },
        &mut |_| {},
        None,
    ))
    .expect_err("mask without image");
    assert!(err.to_string().starts_with("mask:"), "{err}");
}
