//! Whole text-to-image runs against diffusers (`refs.safetensors`): 20 steps, guidance 5, 64x64,
//! from `init_latents`, for Euler, DDIM and DPM++ 2M and prompts 1..3, f32 weights.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_kernels::{ContextOptions, DType, GpuContext};
use sd_models::{ModelSource, StableDiffusion};
use sd_weights::SafetensorsFile;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

fn refs() -> &'static SafetensorsFile {
    static REFS: OnceLock<SafetensorsFile> = OnceLock::new();
    REFS.get_or_init(|| {
        SafetensorsFile::read(&fixtures().join("tiny-sd-digits-refs/refs.safetensors"))
            .expect("refs.safetensors")
    })
}

fn reference(name: &str) -> Vec<f32> {
    refs()
        .tensor(name)
        .unwrap_or_else(|| panic!("no tensor {name} in refs"))
        .to_f32()
        .expect("f32 ref")
}

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

fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

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
                Some(&init),
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
