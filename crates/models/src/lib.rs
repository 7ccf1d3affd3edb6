//! Stable Diffusion's models as compositions of `sd-kernels`: the CLIP text encoder,
//! `UNet2DConditionModel` and `AutoencoderKL`, built from their diffusers `config.json` and
//! weights loaded by their diffusers names. One file per diffusers module.
//!
//! [`plan`] is the memory planner: from the configs and an image size it computes every
//! buffer the forward passes need and checks them against the device limits, without a GPU.
//!
//! The pipeline reaches the networks through [`backend::Networks`]: [`GpuNetworks`] here, or
//! candle on the CPU (the `sd-cpu` crate).

pub mod attention;
pub mod backend;
pub mod chunks;
pub mod clip;
pub mod gpu;
pub mod image_input;
pub mod layers;
pub mod pipeline;
pub mod plan;
pub mod png;
pub mod resnet;
pub mod source;
pub mod transformer;
pub mod unet;
pub mod vae;

pub use backend::{DeviceKind, Networks, PromptEmbeddings, UNetInputs};
pub use clip::{CLIPTextModel, TextEncoding, TextOutput};
pub use gpu::GpuNetworks;
pub use layers::Params;
pub use pipeline::{Generated, Inputs, PipelineFiles, StableDiffusion};
pub use source::ModelSource;
pub use unet::{UNet2DConditionModel, UNetConditioning};
pub use vae::{VaeDecoder, VaeEncoder};

/// Everything that can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A GPU error or a kernel's shape check.
    #[error(transparent)]
    Kernel(#[from] sd_kernels::KernelError),
    /// A missing, truncated or mis-shaped weight.
    #[error(transparent)]
    Weights(#[from] sd_weights::WeightError),
    /// A config file that could not be read.
    #[error(transparent)]
    Config(#[from] sd_core::config::ConfigError),
    /// The model does not fit the device.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// The config asks for a module we do not implement.
    #[error("{part}: {what} is not supported")]
    Unsupported { part: &'static str, what: String },
    /// A model file that could not be read.
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    /// The tokenizer could not be loaded or could not encode the prompt.
    #[error(transparent)]
    Tokenizer(#[from] sd_weights::TokenizerError),
    /// Generation parameters outside what is allowed.
    #[error(transparent)]
    Params(#[from] sd_core::params::ParamsError),
    /// The sampler could not be built or stepped.
    #[error(transparent)]
    Sampler(#[from] sd_core::sampler::SamplerError),
    /// Tensors that do not fit together (a bug or a bad input).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An input image or mask that cannot be used.
    #[error("{field}: {message}")]
    Input {
        /// `init_image` or `mask`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A backend other than the GPU failed (the CPU backend's candle errors).
    #[error("the {backend} backend: {message}")]
    Backend {
        /// `cpu`.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The caller stopped the generation.
    #[error("the generation was cancelled")]
    Cancelled,
}

/// Result type of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
