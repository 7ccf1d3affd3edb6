//! The pipeline plans every generation before any GPU work: a size whose VAE tensors would need
//! channel chunks (not yet executed) fails at once with a typed error naming the tensor.

use std::path::PathBuf;
use std::sync::Arc;

use sd_core::params::GenerationParams;
use sd_kernels::{ContextOptions, DType, GpuContext};
use sd_models::plan::PlanError;
use sd_models::{ModelError, ModelSource, StableDiffusion};

#[test]
fn a_size_that_needs_chunks_is_refused_before_running() {
    let options = ContextOptions::for_tests().expect("valid environment");
    let ctx = Arc::new(pollster::block_on(GpuContext::new(options)).expect("a GPU adapter"));
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/tiny-sd-digits");
    let model = StableDiffusion::load(ctx, &ModelSource::folder(folder), DType::F16).expect("load");
    // 2048x2048: the decoder's last convolutions hold 32 channels x 2048 x 2048 x 4 bytes = 512 MiB.
    let params = GenerationParams { width: 2048, height: 2048, steps: 1, ..GenerationParams::default() };
    let mut stages = Vec::new();
    let result = pollster::block_on(model.generate(&params, None, &mut |s| stages.push(s), None));
    match result {
        Err(ModelError::Plan(PlanError::Limit { name, needed, max })) => {
            assert!(name.contains("vae.decoder") && name.contains("channel chunks"), "{name}");
            assert!(needed > max);
        }
        other => panic!("expected a plan limit error, got {other:?}"),
    }
    assert!(stages.is_empty(), "nothing ran: {stages:?}");
}
