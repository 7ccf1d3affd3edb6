//! diffusers' recorded img2img and inpainting runs (`more_refs.safetensors`,
//! `tiny-arch/inpaint9-refs.safetensors`) replayed through a pipeline on any backend: the
//! recorded start noise goes in as `initial_latents`, and every step, the final latents and the
//! image are compared.

// Only the img2img tests (GPU and CPU) use these; every other binary that includes `common` does not.
#![allow(dead_code)]

use image::{GrayImage, Luma};
use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_models::{Inputs, StableDiffusion};
use sd_weights::SafetensorsFile;

use super::{assert_run_matches, fixture_mask, fixtures, input_image, more_refs, run, tensor};

/// A white square over pixels `from..to` both ways on black, 64x64.
pub fn square_mask(from: u32, to: u32) -> GrayImage {
    GrayImage::from_fn(64, 64, |x, y| {
        let inside = (from..to).contains(&x) && (from..to).contains(&y);
        Luma([if inside { 255 } else { 0 }])
    })
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
