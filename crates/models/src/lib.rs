//! Stable Diffusion's models as compositions of `sd-kernels`: the CLIP text encoder,
//! `UNet2DConditionModel` and `AutoencoderKL`, built from their diffusers `config.json` and
//! weights loaded by their diffusers names. One file per diffusers module.
//!
//! Each network is written once ([`nets`]) against the [`record::Recorder`] interface and read
//! three ways: [`gpu::GpuRecorder`] records kernel dispatches (the executor), [`plan`]'s recorder
//! records every buffer and checks it against the device limits without a GPU (the memory
//! planner), and [`cost`] counts FLOPs, bytes and dispatches per op.
//!
//! The pipeline reaches the networks through [`backend::Networks`]: [`GpuNetworks`] here, or
//! candle on the CPU (the `sd-cpu` crate).

pub mod backend;
pub mod cost;
pub mod gpu;
pub mod image_input;
pub mod nets;
pub mod pipeline;
pub mod plan;
pub mod png;
pub mod record;
pub mod source;

pub use backend::{
    Blend, DenoiseLoop, DeviceKind, NetworkConfigFiles, NetworkConfigs, Networks, NoisePredictor,
    PromptEmbeddings, UNetInputs,
};
pub use gpu::{
    CLIPTextModel, GpuNetworks, TextEncoding, TextKeysValues, UNet2DConditionModel,
    UNetConditioning, VaeDecoder, VaeEncoder, WeightLoader,
};
pub use nets::clip::TextOutput;
pub use pipeline::{Generated, Inputs, PipelineFiles, StableDiffusion};
pub use source::ModelSource;

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
    /// An op asked for a weight that loading did not upload (the loading walk and the running
    /// walk disagree: a bug).
    #[error("the weight `{name}` was not loaded")]
    NotLoaded { name: String },
    /// A model part's input was not given (an SDXL UNet without `text_embeds`, ...).
    #[error("the {part} needs the input `{name}`, which was not given")]
    MissingInput { part: &'static str, name: String },
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
    /// An op or a part was given tensors that do not fit it (a caller's bug), naming it.
    #[error("{op}: {message}")]
    Mismatch {
        /// The op (`unet.conv_in`), the part or the call.
        op: String,
        /// What does not fit.
        message: String,
    },
    /// A model lacks a module its use needs (SDXL's pooled output without `text_projection`).
    #[error("the {part} has no `{module}`, which {purpose} needs")]
    MissingModule {
        /// `text_encoder_2`.
        part: &'static str,
        /// The module.
        module: &'static str,
        /// What needs it.
        purpose: &'static str,
    },
    /// The request asked for no image.
    #[error("no image was generated: the request asked for none")]
    NoImages,
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
