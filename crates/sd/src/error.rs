//! What can go wrong, as one error type with a variant per kind of cause.

use std::path::PathBuf;

use sd_models::ModelError;

/// Everything the front door can fail with. Messages name what was wrong and what is allowed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option of [`crate::Options`] outside what is allowed (an unknown sampler lists the
    /// known ones).
    #[error("{option}: {message}")]
    InvalidOption {
        /// The option (`width`, `sampler`, `strength`, `init_image`, `mask`, ...).
        option: &'static str,
        /// Its value and what is allowed.
        message: String,
    },
    /// No preset, path or model folder of that name.
    #[error("model `{name}` not found; looked for {}", searched.join(", "))]
    ModelNotFound {
        /// The name asked for.
        name: String,
        /// Every place looked at, in order.
        searched: Vec<String>,
    },
    /// A model name that would leave the models folder (`../`, an absolute path that does not
    /// exist) or is empty.
    #[error("model name `{name}`: {reason}")]
    ModelName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A hub preset's file could not be downloaded (the server, the network or the cache
    /// folder failed).
    #[error("preset `{preset}`: cannot download {file}: {message}")]
    Download {
        /// The preset.
        preset: String,
        /// The file, as a path inside the hub repository.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// `HF_HUB_OFFLINE` is set and a hub preset's files are not all in the hub cache.
    #[error(
        "preset `{preset}`: HF_HUB_OFFLINE is set and {} of {repo} {} not in the hub cache ({}); \
         unset HF_HUB_OFFLINE to download {}",
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" },
        cache.display(),
        if missing.len() == 1 { "it" } else { "them" }
    )]
    Offline {
        /// The preset.
        preset: String,
        /// Its hub repository.
        repo: String,
        /// The files absent from the cache, as paths inside the repository.
        missing: Vec<String>,
        /// The repository's folder in the cache.
        cache: PathBuf,
    },
    /// The model could not be loaded: a missing or damaged file, an unsupported config, no GPU.
    #[error("cannot load the model {model}: {source}")]
    Load {
        /// The model, as resolved (a path or a preset name).
        model: String,
        /// The cause.
        #[source]
        source: Box<ModelError>,
    },
    /// `--device gpu` (or [`crate::Device::Gpu`]) and wgpu found no adapter.
    #[error("no GPU adapter found ({reason}); to run on the GPU, {remedy}; or use --device cpu")]
    NoGpu {
        /// What wgpu said.
        reason: String,
        /// What to install on this system.
        remedy: &'static str,
    },
    /// The generation failed on the GPU or did not fit the device.
    #[error(transparent)]
    Generation(Box<ModelError>),
    /// The [`crate::CancelToken`] was cancelled.
    #[error("the generation was cancelled")]
    Cancelled,
    /// An image could not be encoded or written.
    #[error("{path}: {message}")]
    Output {
        /// The file (or the format, when encoding to memory).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The GPU device was lost (a driver reset, an unplugged GPU, [`crate::Model`]'s context
    /// disposed): the reason, if this error comes from that. The model cannot generate again;
    /// load it anew.
    pub fn device_lost(&self) -> Option<&str> {
        // The model errors are transparent (their `source` skips a level): match them.
        let model = match self {
            Self::Generation(e) => e,
            Self::Load { source, .. } => source,
            _ => return None,
        };
        match model.as_ref() {
            ModelError::Kernel(sd_kernels::KernelError::DeviceLost(reason)) => Some(reason),
            _ => None,
        }
    }

    /// A generation error: cancellations, bad parameters and bad inputs get their own variants.
    pub(crate) fn from_generation(error: ModelError) -> Self {
        match error {
            ModelError::Cancelled => Self::Cancelled,
            ModelError::Params(e) => Self::InvalidOption {
                option: e.field.name(),
                message: e.message,
            },
            ModelError::Input { field, message } => Self::InvalidOption {
                option: field,
                message,
            },
            ModelError::Sampler(e) => Self::InvalidOption {
                option: "sampler",
                message: e.to_string(),
            },
            other => Self::Generation(Box::new(other)),
        }
    }
}
