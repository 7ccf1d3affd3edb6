//! The seam between the pipeline and the device its networks run on.
//!
//! The pipeline (`pipeline.rs`) owns everything that is the same on any device: tokenizing,
//! the samplers, img2img and inpainting conditioning, batching, guidance, progress and
//! cancellation. It calls the text encoder(s), the UNet and the VAE only through
//! [`Networks`], with plain host arrays, so one pipeline runs on two backends: the WGSL kernels
//! ([`crate::gpu::GpuNetworks`]) and candle-transformers on the CPU (the `sd-cpu` crate).
//!
//! The calls return boxed futures so the trait is object-safe: on the GPU (in the browser
//! above all) they wait for the device; on the CPU they are ready at once.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use std::ops::Range;

use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};
use sd_core::progress::Stage;
use sd_core::rng::NoiseRng;
use sd_core::sampler::Sampler;

use crate::Result;

/// A future a backend returns (not `Send`: WebGPU's futures are not).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Which kind of device runs the networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// The WGSL kernels on a wgpu adapter (a real GPU, or a software one such as lavapipe).
    Gpu,
    /// candle-transformers on the CPU.
    Cpu,
}

impl DeviceKind {
    /// `gpu` or `cpu`, as the `--device` option and the APIs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
        }
    }
}

/// Token ids of a batch of prompts for one tokenizer: `[prompts, len]` row-major, and each
/// row's end-token position (where the pooled output is read).
#[derive(Debug, Clone, Copy)]
pub struct TokenIds<'a> {
    pub ids: &'a [u32],
    pub eos: &'a [usize],
    pub prompts: usize,
    pub len: usize,
}

/// The text encoders' output for a batch of prompts, on the host.
#[derive(Debug, Clone)]
pub struct PromptEmbeddings {
    /// `encoder_hidden_states` `[prompts, L, D]`, row-major.
    pub hidden: Vec<f32>,
    /// `[prompts, L, D]`.
    pub shape: [usize; 3],
    /// SDXL's pooled `text_embeds` `[prompts, pooled]`.
    pub pooled: Option<Vec<f32>>,
}

/// What every UNet call of an image group is conditioned on, host side: the context rows
/// (`[negative x images, prompt x images]` under CFG), and LCM's guidance embedding or SDXL's
/// pooled embeddings and time ids where the UNet takes them (one row per context row).
#[derive(Debug, Clone, Default)]
pub struct UNetInputs {
    /// `encoder_hidden_states` `[rows, L, D]`.
    pub context: Vec<f32>,
    /// `[rows, L, D]`.
    pub context_shape: [usize; 3],
    /// `timestep_cond` `[rows, time_cond_proj_dim]` (LCM).
    pub timestep_cond: Option<Vec<f32>>,
    /// `text_embeds` `[rows, pooled]` (SDXL).
    pub text_embeds: Option<Vec<f32>>,
    /// `time_ids` `[rows, 6]` (SDXL).
    pub time_ids: Option<Vec<f32>>,
}

impl UNetInputs {
    /// Context rows alone (SD 1.x/2.x).
    pub fn context(context: Vec<f32>, shape: [usize; 3]) -> Self {
        Self {
            context,
            context_shape: shape,
            ..Self::default()
        }
    }

    /// The number of rows (UNet batch entries) the inputs are for.
    pub fn rows(&self) -> usize {
        self.context_shape[0]
    }
}

/// The configs of the model's networks: what the backends build, the planner plans and the
/// cost model counts.
#[derive(Debug, Clone, Copy)]
pub struct NetworkConfigs<'a> {
    /// `text_encoder/config.json`.
    pub text_encoder: &'a CLIPTextConfig,
    /// `text_encoder_2/config.json` (SDXL).
    pub text_encoder_2: Option<&'a CLIPTextConfig>,
    /// `unet/config.json`.
    pub unet: &'a UNet2DConditionConfig,
    /// `vae/config.json`.
    pub vae: &'a AutoencoderKLConfig,
}

/// The network configs of a model folder, owned; read without tokenizers or weights, for the
/// planner and the cost model (`sd cost`).
#[derive(Debug, Clone)]
pub struct NetworkConfigFiles {
    /// `text_encoder/config.json`.
    pub text_encoder: CLIPTextConfig,
    /// `text_encoder_2/config.json` (SDXL).
    pub text_encoder_2: Option<CLIPTextConfig>,
    /// `unet/config.json`.
    pub unet: UNet2DConditionConfig,
    /// `vae/config.json`.
    pub vae: AutoencoderKLConfig,
}

impl NetworkConfigFiles {
    /// Reads the `*/config.json` of `source`'s text encoder(s), UNet and VAE.
    ///
    /// # Errors
    ///
    /// A file that is missing or not a valid config.
    pub fn read(source: &crate::ModelSource) -> crate::Result<Self> {
        let second = "text_encoder_2/config.json";
        Ok(Self {
            text_encoder: CLIPTextConfig::from_json(
                "text_encoder/config.json",
                &source.read_text("text_encoder/config.json")?,
            )?,
            text_encoder_2: match source.has(second) {
                true => Some(CLIPTextConfig::from_json(
                    second,
                    &source.read_text(second)?,
                )?),
                false => None,
            },
            unet: UNet2DConditionConfig::from_json(
                "unet/config.json",
                &source.read_text("unet/config.json")?,
            )?,
            vae: AutoencoderKLConfig::from_json(
                "vae/config.json",
                &source.read_text("vae/config.json")?,
            )?,
        })
    }

    /// The configs by reference.
    pub fn configs(&self) -> NetworkConfigs<'_> {
        NetworkConfigs {
            text_encoder: &self.text_encoder,
            text_encoder_2: self.text_encoder_2.as_ref(),
            unet: &self.unet,
            vae: &self.vae,
        }
    }
}

/// A generation's size, for the checks a backend makes before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSize {
    pub width: u32,
    pub height: u32,
    /// Whether the UNet runs on `[negative, prompt]` pairs.
    pub cfg: bool,
    /// Whether the VAE encoder runs (img2img, inpainting).
    pub encodes: bool,
}

/// `Send + Sync` natively, where a model is shared between threads; nothing in wasm32, where
/// WebGPU's objects are neither and there is one thread.
#[cfg(not(target_arch = "wasm32"))]
pub trait ThreadSafe: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync> ThreadSafe for T {}
/// `Send + Sync` natively; nothing in wasm32.
#[cfg(target_arch = "wasm32")]
pub trait ThreadSafe {}
#[cfg(target_arch = "wasm32")]
impl<T> ThreadSafe for T {}

/// The text encoder(s), the UNet and the VAE of one model on one device.
pub trait Networks: ThreadSafe + Debug + std::any::Any {
    /// Which kind of device runs them.
    fn kind(&self) -> DeviceKind;

    /// One line naming the device (`Vulkan: llvmpipe ...`, `CPU: candle, 2 threads`).
    fn describe(&self) -> String;

    /// The networks' configs.
    fn configs(&self) -> NetworkConfigs<'_>;

    /// Runs the text encoder on `first` (SD 1.x/2.x: its last hidden state) or, with SDXL's
    /// `second`, both encoders' `hidden_states[-2]` without the final norm concatenated on the
    /// last axis, and the second one's pooled, projected end-token state.
    fn encode_text<'a>(
        &'a self,
        first: TokenIds<'a>,
        second: Option<TokenIds<'a>>,
    ) -> BoxFuture<'a, Result<PromptEmbeddings>>;

    /// Prepares the conditioning an image group's UNet calls share (uploaded once on the GPU).
    fn prepare_unet<'a>(&'a self, inputs: &UNetInputs) -> Result<Box<dyn NoisePredictor + 'a>>;

    /// The VAE decoder on `latents` `[1, 4, h, w]` already divided by the scaling factor;
    /// returns the image `[3, 8h, 8w]` in the model's `[-1, 1]` range.
    fn decode<'a>(
        &'a self,
        latents: &'a [f32],
        h: usize,
        w: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>>>;

    /// The VAE encoder (with `quant_conv`) on an image `[1, 3, height, width]` in `[-1, 1]`;
    /// returns the moments `[8, height/8, width/8]`: the mean, then the log-variance (unclamped).
    fn encode_image<'a>(
        &'a self,
        image: &'a [f32],
        height: usize,
        width: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>>>;

    /// Fails before any work when a generation of this size cannot run on the device (a
    /// binding over the GPU's limits, or more memory than the CPU backend's budget), naming
    /// what does not fit.
    fn check_size(&self, size: RunSize) -> Result<()>;

    /// The most images that may share one UNet call at this size, 1 to `count`.
    fn images_per_unet_call(&self, width: u32, height: u32, cfg: bool, count: u32) -> u32;
}

/// An image group's denoising loop, for a predictor that runs it with the latents on its own
/// device ([`NoisePredictor::denoise_on_device`]). It must do what the pipeline's host loop does
/// (`pipeline/denoise.rs`): the same model calls, the same samplers' programs, the same noise
/// draws from the same generators, the same events.
pub struct DenoiseLoop<'a> {
    /// One sampler per image, each with its schedule set.
    pub samplers: &'a mut [Box<dyn Sampler>],
    /// One noise generator per image: what the samplers' noise is drawn from, in order.
    pub rngs: &'a mut [NoiseRng],
    /// Each image's latents `[4, h, w]`: the starting ones in, the denoised ones out.
    pub latents: &'a mut [Vec<f32>],
    /// The model calls to run: indices into the samplers' timesteps.
    pub calls: Range<usize>,
    /// The latents' height and width.
    pub shape: (usize, usize),
    /// The guidance scale under classifier-free guidance (the UNet batch is then
    /// `[negative x images, prompt x images]`); `None` without it.
    pub guidance: Option<f32>,
    /// A 9-channel inpainting UNet's extra input channels, after each image's latents.
    pub unet_extra: Option<&'a [f32]>,
    /// The inpainting blend of a 4-channel UNet.
    pub blend: Option<Blend<'a>>,
    /// Told `Stage::Diffusion` before the first call and after each.
    pub on_stage: &'a mut dyn FnMut(Stage),
    /// Sees each image's latents after each call, in order (late, where they are read back
    /// without waiting).
    pub on_step: Option<crate::pipeline::StepObserver<'a>>,
    /// Asked before every call; an error stops the loop (cancellation).
    pub check: &'a dyn Fn() -> Result<()>,
}

impl Debug for DenoiseLoop<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenoiseLoop")
            .field("images", &self.latents.len())
            .field("calls", &self.calls)
            .field("shape", &self.shape)
            .field("guidance", &self.guidance)
            .field("blend", &self.blend.is_some())
            .finish_non_exhaustive()
    }
}

/// Inpainting with a 4-channel UNet: after every call the known region, noised to the next
/// call's level (the clean latents after the last), replaces what the sampler made of it.
#[derive(Debug, Clone, Copy)]
pub struct Blend<'a> {
    /// Each image's clean latents (an image without them is not blended).
    pub image_latents: &'a [Option<Vec<f32>>],
    /// The noise each image started from.
    pub start_noise: &'a [Vec<f32>],
    /// One value per latent pixel: 1 where the model paints, 0 where the image is kept.
    pub mask: &'a [f32],
}

/// The UNet with an image group's conditioning in place.
pub trait NoisePredictor {
    /// One UNet call on the host-side `latents` `[B, C, h, w]` at timestep `t` (the same for
    /// every row); returns the prediction `[B, 4, h, w]`.
    fn predict<'a>(
        &'a self,
        latents: &'a [f32],
        shape: [usize; 4],
        t: f32,
    ) -> BoxFuture<'a, Result<Vec<f32>>>;

    /// Whether this predictor runs the whole denoising loop itself, with the latents on its
    /// device ([`NoisePredictor::denoise_on_device`]); otherwise the pipeline steps the
    /// samplers on the host between [`NoisePredictor::predict`] calls.
    fn keeps_latents(&self) -> bool {
        false
    }

    /// Runs `run` with the latents on the device: no readback and no wait inside the loop
    /// (previews are read back without waiting). Only where [`NoisePredictor::keeps_latents`].
    fn denoise_on_device<'a>(&'a self, run: DenoiseLoop<'a>) -> BoxFuture<'a, Result<()>> {
        let _ = run;
        Box::pin(async {
            Err(crate::ModelError::Mismatch {
                op: "denoise".into(),
                message: "this backend steps the samplers on the host".into(),
            })
        })
    }
}
