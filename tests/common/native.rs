//! The native side of the browser comparisons (`tests/browser.rs`, `examples/bench_web.rs`):
//! the same web model folder the browser loads, read by `sd_models::ModelSource::open` (which
//! recognises `manifest.json` and verifies the shards), on the adapter wgpu picks
//! (`ContextOptions::from_env`), with the request the browser tests make: euler_a, 20 steps,
//! guidance 5, no negative prompt, the model's native size.

use std::path::Path;
use std::sync::Arc;

use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_kernels::{ContextOptions, DType, GpuContext};
use sd_models::{Generated, Inputs, ModelSource, StableDiffusion};

/// Steps of the browser tests' and the benchmark's generations.
pub const STEPS: usize = 20;
/// Their guidance scale.
pub const GUIDANCE: f32 = 5.0;

/// Loads the model in `dir` (a web model folder) with f16 weight matrices, as the browser does.
pub fn load(dir: &Path) -> Result<StableDiffusion, String> {
    let options = ContextOptions::from_env().map_err(|e| format!("GPU options: {e}"))?;
    let ctx = pollster::block_on(GpuContext::new(options))
        .map_err(|e| format!("no GPU context for the native side: {e}"))?;
    let source = ModelSource::open(dir)
        .map_err(|e| format!("cannot read the web model {}: {e}", dir.display()))?;
    StableDiffusion::load(Arc::new(ctx), &source, DType::F16)
        .map_err(|e| format!("cannot load {} natively: {e}", dir.display()))
}

/// The browser tests' request for `prompt` and `seed` at the model's native size.
pub fn params(model: &StableDiffusion, prompt: &str, seed: u64) -> GenerationParams {
    let (width, height) = model.native_size();
    GenerationParams {
        prompt: prompt.to_string(),
        negative_prompt: String::new(),
        steps: STEPS,
        guidance_scale: GUIDANCE,
        seed,
        sampler: SamplerKind::EULER_A,
        width,
        height,
        count: 1,
        strength: GenerationParams::default().strength,
        sample_init_latents: false,
        latents_len: None,
    }
}

/// Generates `params` (RGB images, 8 bits per channel).
pub fn generate(model: &StableDiffusion, params: &GenerationParams) -> Result<Generated, String> {
    pollster::block_on(model.generate(params, &Inputs::default(), &mut |_| {}, None))
        .map_err(|e| format!("native generation failed: {e}"))
}

/// Generates `params` from unit-noise starting `latents` instead of the seed's noise.
#[allow(dead_code)] // the benchmark starts from the seed
pub fn generate_from_latents(
    model: &StableDiffusion,
    params: &GenerationParams,
    latents: &[f32],
) -> Result<Generated, String> {
    let inputs = Inputs {
        initial_latents: Some(latents),
        ..Inputs::default()
    };
    pollster::block_on(model.generate(params, &inputs, &mut |_| {}, None))
        .map_err(|e| format!("native generation failed: {e}"))
}
