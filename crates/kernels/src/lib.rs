//! WGSL compute kernels for Stable Diffusion and the Rust that launches them.
//!
//! Every tensor operation of CLIP, the UNet and the VAE is one of the kernels here. Each kernel is
//! a `.wgsl` file under `shaders/`, a typed launcher under [`ops`] that checks shapes and records
//! a dispatch into a [`Batch`], and a plain-Rust CPU reference under [`reference`] that the tests
//! compare against.
//!
//! Only this crate creates GPU objects (`device.create_*`); it re-exports [`wgpu`] so that the
//! other crates use the same version.

mod batch;
mod context;
mod error;
mod inflight;
mod kernel;
pub mod ops;
mod pipeline;
mod pool;
mod recorded;
pub mod reference;
mod shader;
mod tensor;

pub use batch::{Batch, Profile, Timing};
pub use context::{ContextOptions, F16Mode, GpuContext, NeededLimits, WorkCount};
pub use error::KernelError;
pub use inflight::{Fence, PendingRead};
pub use pipeline::PipelineKey;
pub use pool::PoolStats;
pub use recorded::Recorded;
pub use shader::{ShaderVariant, compose_shader};
pub use tensor::{DType, Tensor};
pub use wgpu;

/// Result type of this crate.
pub type Result<T, E = KernelError> = core::result::Result<T, E>;
