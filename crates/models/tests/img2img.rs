//! img2img and 9-channel inpainting on the WGSL path against diffusers (`more_refs.safetensors`,
//! `tiny-arch/inpaint9`): the recorded start noise goes in as `initial_latents`, every step and
//! the final latents are compared; and the batched path against one image at a time.

mod common;

use std::sync::OnceLock;

use sd_core::params::GenerationParams;
use sd_kernels::DType;
use sd_models::{Inputs, ModelSource, StableDiffusion};

use common::recorded::{self, params, square_mask};
use common::{context, fixtures, input_image, max_abs_diff, run};

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

/// diffusers' img2img on the WGSL path (the VAE encoder, the shortened schedule, the samplers'
/// steps on the GPU): Euler at strength 0.5, DDIM at 0.8.
#[test]
fn img2img_matches_diffusers() {
    recorded::img2img(digits(), "img2img_euler_s05", "euler", 0.5, 10);
    recorded::img2img(digits(), "img2img_ddim_s08", "ddim", 0.8, 16);
}

/// Legacy inpainting (a 4-channel UNet): the known region blended back after every step, on
/// the GPU in the step interpreter.
#[test]
fn inpainting_matches_diffusers_with_a_four_channel_unet() {
    recorded::inpaint_four_channels(digits());
}

/// A 9-channel inpainting UNet (`tiny-arch/inpaint9`) takes the mask and the masked image's
/// latents as input channels; diffusers' 20-step run from given latents.
#[test]
fn inpainting_matches_diffusers_with_a_nine_channel_unet() {
    recorded::inpaint_nine_channels(&load("tiny-arch/inpaint9"));
}

/// Strength 0 runs no step: the output is the input through the VAE (encode, decode).
#[test]
fn strength_zero_gives_the_input_back_through_the_vae() {
    let image = input_image();
    let p = params("a yellow digit zero on a green background", "euler", 0.0);
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
    let mut p = params("a red digit seven on a blue background", "euler_a", 0.6);
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
    let p = params("x", "euler", 1.0);
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
