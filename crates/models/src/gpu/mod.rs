//! The WGSL backend: the networks' walks recorded as kernel dispatches ([`GpuRecorder`]), the
//! models with their weights on one [`sd_kernels::GpuContext`] (`models.rs`), and
//! [`GpuNetworks`], the pipeline's view of them.

mod models;
mod networks;
mod recorder;
mod unet_call;

pub use models::{
    CLIPTextModel, Decoder, Encoder, TextEncoding, TextKeysValues, UNet2DConditionModel,
    UNetConditioning, Vae, VaeDecoder, VaeEncoder, WeightLoader,
};
pub use networks::{BATCH_ACTIVATION_BUDGET, GpuNetworks};
pub use recorder::{GpuRecorder, GpuTensor, Issued, Weights};
