//! What the workspace's tests share, as a dev-dependency: the fixtures' folder, the fixtures'
//! judge ([`judge`]), a stand-in for the Hugging Face hub ([`hub_mirror`]) and, with the `gpu`
//! feature, one GPU context per test binary.

pub mod hub_mirror;
pub mod judge;

use std::path::{Path, PathBuf};

/// `shared/fixtures`, beside the repository (looked for upwards from this crate, so a clone
/// with the fixtures one level up works as the workplace's layout does).
pub fn fixtures() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|dir| dir.join("shared/fixtures"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| here.join("../../../shared/fixtures"))
}

/// One GPU context for the tests of a binary: the adapter the test environment asks for
/// (`SD_ADAPTER`, `WGPU_BACKEND`, `SD_EXPECT_BACKEND`; lavapipe without a GPU).
///
/// # Panics
///
/// When the environment is invalid or no adapter is found: a test that needs a GPU cannot run.
#[cfg(feature = "gpu")]
pub fn gpu_context() -> &'static std::sync::Arc<sd_kernels::GpuContext> {
    use std::sync::{Arc, OnceLock};
    static CTX: OnceLock<Arc<sd_kernels::GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let options = sd_kernels::ContextOptions::for_tests().expect("valid environment");
        Arc::new(pollster::block_on(sd_kernels::GpuContext::new(options)).expect("a GPU adapter"))
    })
}
