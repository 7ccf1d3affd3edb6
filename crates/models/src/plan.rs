//! The memory planner: every GPU buffer that the forward passes of the text encoder, one UNet
//! step, the VAE decoder and the VAE encoder need, computed from the configs and a resolution
//! without running anything, and checked against the device's limits.
//!
//! The planner runs the same network code as the executor (`crate::nets`) with the plan
//! recorder (`recorder.rs`), which records each op, in order, named by its diffusers module
//! path (`unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1`), with every buffer it
//! binds:
//!
//! - activations are f32; weight matrices, convolution kernels and embeddings f16, vectors f32;
//! - NCHW for convolutions and norms, token-major `[n, l, d]` inside transformers (layout
//!   changes copy into a new tensor);
//! - attention is flash-style: `q, k, v -> o` with no score buffer;
//! - a tensor larger than one storage binding is split into chunks ([`chunk`]);
//! - activations come from a pool: a buffer is taken at its first write and given back after
//!   its last read, and a later buffer of the same rounded size reuses it.
//!
//! From the record the planner derives per part the weights, the peak of live activation
//! bytes, the pool, the largest binding and the largest buffer ([`PartSummary`]), and overall
//! the peak of weights resident plus the worst part's activation peak ([`MemoryPlan`]).

use std::fmt;

use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};

pub mod chunk;
mod graph;
mod recorder;

pub use crate::backend::NetworkConfigs;
pub use crate::nets::unet::UNetSize;
pub use chunk::{ChunkSpec, channel_chunk, chunk_group_size, chunk_layout, row_chunk};
pub(crate) use graph::Graph;
pub use graph::{
    ACTIVATION_BYTES, Access, Activation, Arg, Assembly, Buffer, BufferId, Chunk, NamedSize, Op,
    OpKind, Operand, POOL_SIZE_QUANTUM, Padding, PartPlan, PartSummary, PlannedTensor, Shape,
    TensorId, Weight, WeightDtype, WeightId,
};

use crate::nets::clip::{TextOutput, TextRequest, clip_text_model};
use crate::nets::{unet, vae};

/// Plans one text-encoder call on `batch` prompts of `max_position_embeddings` (77) tokens:
/// two per image with classifier-free guidance (the negative or empty prompt, and the prompt).
/// `part` is [`Part::TextEncoder`] or, for SDXL's `CLIPTextModelWithProjection`,
/// [`Part::TextEncoder2`], which adds the pooled output's `text_projection`.
///
/// # Errors
///
/// [`PlanError::Limit`] for a buffer that does not fit (at tiny limits: the token embedding).
pub fn plan_text_encoder(
    config: &CLIPTextConfig,
    part: Part,
    batch: usize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    let mut g = Graph::new(part, *limits, 0);
    counted_text_call(config, part, batch, |request| {
        clip_text_model(&mut g, config, request)
    })?;
    g.finish()
}

/// Calls `walk` with the text-encoder call that the planner and the cost model count:
/// `batch` prompts' last hidden state, and for SDXL's second encoder the pooled output (read
/// at the last token).
pub(crate) fn counted_text_call<T>(
    config: &CLIPTextConfig,
    part: Part,
    batch: usize,
    walk: impl FnOnce(&TextRequest<'_>) -> T,
) -> T {
    let end_tokens = vec![config.max_position_embeddings.saturating_sub(1); batch];
    walk(&TextRequest {
        prompts: batch,
        output: TextOutput::Last,
        pooled_at: (part == Part::TextEncoder2).then_some(end_tokens.as_slice()),
    })
}

/// Plans one UNet call.
///
/// # Errors
///
/// [`PlanError::Unsupported`] for UNet features SD pipelines do not use (class embeddings,
/// dual cross-attention, `scale_shift` ResNets, ...), [`PlanError::Architecture`] for
/// inconsistent shapes, [`PlanError::Limit`] for a buffer that does not fit.
pub fn plan_unet(
    config: &UNet2DConditionConfig,
    inputs: &UNetSize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    unet::check_supported(config)?;
    let mut g = Graph::new(Part::UNet, *limits, config.norm_num_groups.unwrap_or(0));
    unet::unet_2d_condition_model(&mut g, config, inputs)?;
    g.finish()
}

/// Plans the projection of the text into the keys and values of the UNet's attentions over it
/// (once per generation; see [`unet::ContextProjection`]).
///
/// # Errors
///
/// As [`plan_unet`].
pub fn plan_unet_context(
    config: &UNet2DConditionConfig,
    inputs: &UNetSize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    let projections = unet::context_projections(config, inputs)?;
    let mut g = Graph::new(Part::UNetContext, *limits, 0);
    unet::unet_context_projections(&mut g, config, inputs, &projections)?;
    g.finish()
}

/// Plans `vae.decode` of one `latent_height` x `latent_width` latent.
///
/// # Errors
///
/// [`PlanError::Unsupported`] for block types other than SD's, [`PlanError::Limit`] for a
/// buffer that does not fit even chunked.
pub fn plan_vae_decoder(
    config: &AutoencoderKLConfig,
    latent_height: usize,
    latent_width: usize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    let latent = (latent_height, latent_width);
    plan_vae(Part::VaeDecoder, config, limits, |g| {
        vae::decoder(g, config, latent)
    })
}

/// Plans `vae.encode` of one `height` x `width` image.
///
/// # Errors
///
/// As [`plan_vae_decoder`].
pub fn plan_vae_encoder(
    config: &AutoencoderKLConfig,
    height: usize,
    width: usize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    plan_vae(Part::VaeEncoder, config, limits, |g| {
        vae::encoder(g, config, (height, width))
    })
}

fn plan_vae(
    part: Part,
    config: &AutoencoderKLConfig,
    limits: &DeviceLimits,
    walk: impl FnOnce(&mut Graph) -> Result<(), PlanError>,
) -> Result<PartPlan, PlanError> {
    let mut g = Graph::new(part, *limits, config.norm_num_groups);
    walk(&mut g)?;
    g.finish()
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A buffer or binding is larger than the device allows, even after chunking.
    #[error("`{name}` needs {needed} bytes ({} MiB) but the device allows {max} ({} MiB)", mib(*.needed), mib(*.max))]
    Limit {
        /// The op and binding, or the tensor, that does not fit.
        name: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes the device allows.
        max: u64,
    },
    /// The image size is not allowed.
    #[error(
        "image size {width}x{height} is not allowed: width and height must be positive multiples of {multiple}"
    )]
    Resolution {
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
        /// What both must be multiples of (the VAE's scale factor, 8 for SD).
        multiple: u32,
    },
    /// The batch is empty.
    #[error("a batch of {images} images is not allowed: at least 1")]
    Batch {
        /// Requested images.
        images: u32,
    },
    /// The config uses a module the planner (and the executors) do not implement.
    #[error("{part}: {what} is not supported")]
    Unsupported {
        /// `unet`, `vae` or `text_encoder`.
        part: &'static str,
        /// What.
        what: String,
    },
    /// The config describes shapes that do not fit together.
    #[error("{part}: {message}")]
    Architecture {
        /// Where.
        part: &'static str,
        /// What does not fit.
        message: String,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

/// The device limits the plan must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// `maxStorageBufferBindingSize`: the most bytes one storage binding may cover.
    pub max_storage_binding: u64,
    /// `maxBufferSize`: the largest buffer.
    pub max_buffer: u64,
}

impl DeviceLimits {
    /// WebGPU's defaults, which every adapter supports: 128 MiB per binding, 256 MiB per
    /// buffer. SD 1.5 at 512x512 must run within them.
    pub const WEBGPU_DEFAULT: Self = Self {
        max_storage_binding: 128 << 20,
        max_buffer: 256 << 20,
    };
}

impl Default for DeviceLimits {
    fn default() -> Self {
        Self::WEBGPU_DEFAULT
    }
}

/// A model part, planned separately (they run one after the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The CLIP text encoder, once per generation.
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP bigG with its projection), once per generation.
    TextEncoder2,
    /// The UNet's projection of the text into each attention's keys and values, once per
    /// generation.
    UNetContext,
    /// One UNet call, once per denoising step.
    UNet,
    /// The VAE decoder, once per image.
    VaeDecoder,
    /// The VAE encoder, once per input image (img2img, inpainting).
    VaeEncoder,
}

impl Part {
    /// The prefix of op and tensor names: the pipeline's component folder.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
            Self::UNet | Self::UNetContext => "unet",
            Self::VaeDecoder | Self::VaeEncoder => "vae",
        }
    }

    /// A short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::TextEncoder => "text encoder",
            Self::TextEncoder2 => "text encoder 2",
            Self::UNetContext => "UNet text K/V",
            Self::UNet => "UNet step",
            Self::VaeDecoder => "VAE decode",
            Self::VaeEncoder => "VAE encode",
        }
    }
}

/// What is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRequest {
    /// Image width in pixels (a multiple of 8).
    pub width: u32,
    /// Image height in pixels (a multiple of 8).
    pub height: u32,
    /// Images generated together.
    pub images: u32,
    /// Classifier-free guidance: the text encoder and the UNet run on two prompts per image.
    pub classifier_free_guidance: bool,
}

impl PlanRequest {
    /// One image of `width` x `height` with classifier-free guidance (UNet batch 2).
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            images: 1,
            classifier_free_guidance: true,
        }
    }

    /// The batch of the text encoder and of each UNet call.
    pub fn unet_batch(&self) -> usize {
        let per_image = if self.classifier_free_guidance { 2 } else { 1 };
        self.images as usize * per_image
    }
}

/// The plan of a whole generation: every part, and the figures that decide whether it fits.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// What was planned.
    pub request: PlanRequest,
    /// Against which limits.
    pub limits: DeviceLimits,
    /// Text encoder, UNet step, VAE decode, VAE encode.
    pub parts: Vec<PartPlan>,
    /// Bytes of all weights, resident for the whole generation.
    pub weight_bytes: u64,
    /// The part whose activation peak is largest.
    pub worst_part: Part,
    /// Weights resident plus the worst part's activation peak.
    pub peak_bytes: u64,
    /// The largest single binding of any part.
    pub largest_binding: NamedSize,
    /// The largest single buffer of any part.
    pub largest_buffer: NamedSize,
}

impl MemoryPlan {
    /// The plan of `part`.
    pub fn part(&self, part: Part) -> Option<&PartPlan> {
        self.parts.iter().find(|p| p.part == part)
    }
}

/// Plans a generation of `request` with the models of `configs` on a device with `limits`.
///
/// # Errors
///
/// [`PlanError::Resolution`] unless width and height are positive multiples of the VAE's
/// scale factor (8), [`PlanError::Batch`] for zero images, [`PlanError::Limit`] naming the op
/// whose binding or buffer does not fit, and the errors of the part planners.
pub fn plan(
    configs: &NetworkConfigs<'_>,
    request: &PlanRequest,
    limits: &DeviceLimits,
) -> Result<MemoryPlan, PlanError> {
    let factor = configs.vae.scale_factor();
    let multiple = u32::try_from(factor).unwrap_or(u32::MAX);
    let (width, height) = (request.width as usize, request.height as usize);
    if width == 0
        || height == 0
        || factor == 0
        || !width.is_multiple_of(factor)
        || !height.is_multiple_of(factor)
    {
        return Err(PlanError::Resolution {
            width: request.width,
            height: request.height,
            multiple,
        });
    }
    if request.images == 0 {
        return Err(PlanError::Batch {
            images: request.images,
        });
    }
    let batch = request.unet_batch();
    let text_len = configs.text_encoder.max_position_embeddings;
    let (latent_h, latent_w) = (height / factor, width / factor);
    let mut parts = vec![plan_text_encoder(
        configs.text_encoder,
        Part::TextEncoder,
        batch,
        limits,
    )?];
    if let Some(second) = configs.text_encoder_2 {
        parts.push(plan_text_encoder(
            second,
            Part::TextEncoder2,
            batch,
            limits,
        )?);
    }
    let unet_size = UNetSize {
        batch,
        height: latent_h,
        width: latent_w,
        text_len,
    };
    parts.extend([
        plan_unet_context(configs.unet, &unet_size, limits)?,
        plan_unet(configs.unet, &unet_size, limits)?,
        plan_vae_decoder(configs.vae, latent_h, latent_w, limits)?,
        plan_vae_encoder(configs.vae, height, width, limits)?,
    ]);
    let weight_bytes = parts.iter().map(|p| p.summary.weight_bytes).sum();
    let mut worst = Part::TextEncoder;
    let mut worst_peak = 0;
    let mut largest_binding = NamedSize::default();
    let mut largest_buffer = NamedSize::default();
    for p in &parts {
        let s = &p.summary;
        if s.activation_peak > worst_peak {
            worst_peak = s.activation_peak;
            worst = p.part;
        }
        if s.largest_binding.bytes > largest_binding.bytes {
            largest_binding = s.largest_binding.clone();
        }
        if s.largest_buffer.bytes > largest_buffer.bytes {
            largest_buffer = s.largest_buffer.clone();
        }
    }
    Ok(MemoryPlan {
        request: *request,
        limits: *limits,
        parts,
        weight_bytes,
        worst_part: worst,
        peak_bytes: weight_bytes.saturating_add(worst_peak),
        largest_binding,
        largest_buffer,
    })
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.request;
        writeln!(
            f,
            "{}x{}, {} image(s), UNet batch {}; limits {} MiB per binding, {} MiB per buffer",
            r.width,
            r.height,
            r.images,
            r.unet_batch(),
            mib(self.limits.max_storage_binding),
            mib(self.limits.max_buffer)
        )?;
        writeln!(
            f,
            "{:<13} {:>12} {:>10} {:>11} {:>10} {:>12} {:>12}",
            "part", "params", "weights", "act. peak", "pool", "max binding", "max buffer"
        )?;
        for p in &self.parts {
            let s = &p.summary;
            writeln!(
                f,
                "{:<13} {:>12} {:>10} {:>11} {:>10} {:>12} {:>12}",
                p.part.label(),
                s.weight_params,
                mib(s.weight_bytes),
                mib(s.activation_peak),
                mib(s.pool_bytes),
                mib(s.largest_binding.bytes),
                mib(s.largest_buffer.bytes)
            )?;
        }
        writeln!(
            f,
            "peak total {} MiB = weights {} MiB + {} activation peak {} MiB",
            mib(self.peak_bytes),
            mib(self.weight_bytes),
            self.worst_part.label(),
            mib(self.peak_bytes - self.weight_bytes.min(self.peak_bytes))
        )?;
        writeln!(
            f,
            "largest binding {} MiB: {}",
            mib(self.largest_binding.bytes),
            self.largest_binding.name
        )?;
        write!(
            f,
            "largest buffer {} MiB: {}",
            mib(self.largest_buffer.bytes),
            self.largest_buffer.name
        )
    }
}
