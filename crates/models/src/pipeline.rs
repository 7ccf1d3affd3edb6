//! Text to image, as diffusers' `StableDiffusionPipeline.__call__` does it: encode the prompt
//! and the negative prompt, start from seeded (or given) noise scaled by the sampler's
//! `init_noise_sigma`, run the UNet on the CFG batch `[negative, prompt]` at every step,
//! combine with the guidance scale, step the sampler, and decode the final latents.
//!
//! The networks run behind [`Networks`] (the WGSL kernels on a GPU, or candle on the CPU);
//! everything else, the sampler's arithmetic on the few thousand latent values included, is
//! this file's and the same on either.

use std::sync::Arc;

use image::{GrayImage, RgbImage};
use sd_core::conditioning::{guidance_scale_embedding, sdxl_time_ids};
use sd_core::config::{
    AutoencoderKLConfig, CLIPTextConfig, ModelIndex, SchedulerConfig, UNet2DConditionConfig,
};
use sd_core::params::{GenerationParams, LATENT_CHANNELS, ModelDefaults, VAE_SCALE};
use sd_core::progress::Stage;
use sd_core::rng::NoiseRng;
use sd_core::sampler::{Sampler, SamplerKind};
use sd_kernels::{DType, GpuContext};
use sd_weights::ClipTokenizer;

use crate::backend::{
    DeviceKind, NetworkConfigs, Networks, NoisePredictor, PromptEmbeddings, RunSize, TokenIds,
    UNetInputs,
};
use crate::gpu::GpuNetworks;
use crate::image_input;
use crate::source::ModelSource;
use crate::{ModelError, Result};

/// Sees an image's latents after each denoising step (step index, latents).
pub type StepObserver<'a> = &'a mut dyn FnMut(usize, &[f32]);

/// What a generation starts from besides its parameters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inputs<'a> {
    /// Unscaled unit noise, `count` images of `[4, h/8, w/8]`, instead of the seeded noise
    /// (reference runs).
    pub initial_latents: Option<&'a [f32]>,
    /// img2img and inpainting: the input image, any size (resized to the generation's).
    pub init_image: Option<&'a RgbImage>,
    /// Inpainting: white = repaint, black = keep, grey in between; any size (resized to the
    /// generation's). Needs `init_image`.
    pub mask: Option<&'a GrayImage>,
}

/// A model's configs and tokenizers: what a pipeline reads before any network is built.
#[derive(Debug, Clone)]
pub struct PipelineFiles {
    pub text_encoder: CLIPTextConfig,
    /// SDXL's `text_encoder_2/config.json`.
    pub text_encoder_2: Option<CLIPTextConfig>,
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    pub scheduler: SchedulerConfig,
    tokenizer: ClipTokenizer,
    tokenizer_2: Option<ClipTokenizer>,
    index: Option<ModelIndex>,
}

impl PipelineFiles {
    /// Reads the configs, `model_index.json` and the tokenizer(s) of `source`.
    pub fn read(source: &ModelSource) -> Result<Self> {
        let text_encoder_2 = if source.has("text_encoder_2/config.json") {
            Some(CLIPTextConfig::from_json(
                "text_encoder_2/config.json",
                &source.read_text("text_encoder_2/config.json")?,
            )?)
        } else {
            None
        };
        Ok(Self {
            text_encoder: CLIPTextConfig::from_json(
                "text_encoder/config.json",
                &source.read_text("text_encoder/config.json")?,
            )?,
            tokenizer_2: match text_encoder_2 {
                Some(_) => Some(load_tokenizer(source, "tokenizer_2")?),
                None => None,
            },
            text_encoder_2,
            unet: UNet2DConditionConfig::from_json(
                "unet/config.json",
                &source.read_text("unet/config.json")?,
            )?,
            vae: AutoencoderKLConfig::from_json(
                "vae/config.json",
                &source.read_text("vae/config.json")?,
            )?,
            scheduler: SchedulerConfig::from_json(
                "scheduler/scheduler_config.json",
                &source.read_text("scheduler/scheduler_config.json")?,
            )?,
            tokenizer: load_tokenizer(source, "tokenizer")?,
            index: if source.has("model_index.json") {
                Some(ModelIndex::from_json(
                    "model_index.json",
                    &source.read_text("model_index.json")?,
                )?)
            } else {
                None
            },
        })
    }

    /// The network configs, for a backend to build the networks from.
    pub fn configs(&self) -> NetworkConfigs<'_> {
        NetworkConfigs {
            text_encoder: &self.text_encoder,
            text_encoder_2: self.text_encoder_2.as_ref(),
            unet: &self.unet,
            vae: &self.vae,
        }
    }
}

/// A loaded model: tokenizer(s), the networks on their device, and the scheduler config the
/// samplers are built from.
#[derive(Debug)]
pub struct StableDiffusion {
    networks: Box<dyn Networks>,
    tokenizer: ClipTokenizer,
    /// SDXL's second tokenizer.
    tokenizer_2: Option<ClipTokenizer>,
    /// `force_zeros_for_empty_prompt` (SDXL): an empty negative prompt is zero embeddings
    /// rather than the encoding of "".
    force_zeros_for_empty_prompt: bool,
    scheduler_config: SchedulerConfig,
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generated {
    /// One RGB image per requested image, 8 bits per channel, row-major, no padding.
    pub images: Vec<Vec<u8>>,
    /// Width and height in pixels.
    pub width: u32,
    pub height: u32,
    /// The seed of each image (`seed + index`, so any image can be made again alone).
    pub seeds: Vec<u64>,
    /// The final latents of each image, `[4, h/8, w/8]` (before the VAE).
    pub latents: Vec<Vec<f32>>,
    /// The decoded images before quantisation, NHWC in [0, 1], like diffusers' `output_type="np"`.
    pub pixels: Vec<Vec<f32>>,
    /// Things the user should know (a prompt cut to 77 tokens).
    pub warnings: Vec<String>,
}

impl StableDiffusion {
    /// Loads every part of the model from `source` onto the GPU `ctx`, weight matrices stored
    /// as `matrices` (f16 normally; f32 for parity tests).
    pub fn load(ctx: Arc<GpuContext>, source: &ModelSource, matrices: DType) -> Result<Self> {
        Self::load_with_progress(ctx, source, matrices, &mut |_| {})
    }

    /// [`Self::load`], telling `on_component` which component (`text_encoder`, `unet`, `vae`)
    /// is about to be uploaded.
    pub fn load_with_progress(
        ctx: Arc<GpuContext>,
        source: &ModelSource,
        matrices: DType,
        on_component: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        Self::load_on(source, |files| {
            Ok(Box::new(GpuNetworks::load(
                ctx,
                source,
                files.configs(),
                matrices,
                on_component,
            )?))
        })
    }

    /// Loads the model in `source` with networks that `networks` builds from its files: the
    /// way a backend other than the GPU (the `sd-cpu` crate) plugs in.
    pub fn load_on(
        source: &ModelSource,
        networks: impl FnOnce(&PipelineFiles) -> Result<Box<dyn Networks>>,
    ) -> Result<Self> {
        let files = PipelineFiles::read(source)?;
        let networks = networks(&files)?;
        // diffusers' `StableDiffusionXLPipeline` defaults `force_zeros_for_empty_prompt` to true.
        let force_zeros_for_empty_prompt = files
            .index
            .and_then(|index| index.force_zeros_for_empty_prompt)
            .unwrap_or(files.tokenizer_2.is_some());
        Ok(Self {
            networks,
            tokenizer: files.tokenizer,
            tokenizer_2: files.tokenizer_2,
            force_zeros_for_empty_prompt,
            scheduler_config: files.scheduler,
        })
    }

    /// The networks, on whichever device runs them.
    pub fn networks(&self) -> &dyn Networks {
        self.networks.as_ref()
    }

    /// Which kind of device runs the networks.
    pub fn device_kind(&self) -> DeviceKind {
        self.networks.kind()
    }

    /// The GPU context the model lives on; `None` on the CPU backend.
    pub fn context(&self) -> Option<&Arc<GpuContext>> {
        (self.networks.as_ref() as &dyn std::any::Any)
            .downcast_ref::<GpuNetworks>()
            .map(GpuNetworks::context)
    }

    fn unet_config(&self) -> &UNet2DConditionConfig {
        self.networks.configs().unet
    }

    /// The image size the model was trained at (width, height): the UNet's `sample_size`
    /// times the VAE's scale factor (512x512 for SD 1.5, 64x64 for the digits model).
    pub fn native_size(&self) -> (u32, u32) {
        use sd_core::config::OneOrMany;
        let (h, w) = match &self.unet_config().sample_size {
            Some(OneOrMany::One(n)) => (*n, *n),
            Some(OneOrMany::Many(hw)) if hw.len() == 2 => (hw[0], hw[1]),
            _ => (64, 64),
        };
        (w as u32 * VAE_SCALE, h as u32 * VAE_SCALE)
    }

    /// What requests that leave them out get: the native size, and for an LCM-distilled UNet
    /// (`time_cond_proj_dim`) the LCM pipeline's 4 steps at guidance 8.5 with the LCM sampler
    /// (diffusers' `LatentConsistencyModelPipeline` defaults); otherwise 20 steps, guidance 7.5,
    /// `euler_a`. (Turbo models look like their base models here; their presets say 1 step
    /// without guidance.)
    pub fn defaults(&self) -> ModelDefaults {
        let (width, height) = self.native_size();
        let defaults = ModelDefaults::sized(width, height);
        if self.unet_config().time_cond_proj_dim.is_some() {
            defaults.distilled(4, 8.5, SamplerKind::LCM)
        } else {
            defaults
        }
    }

    /// The scheduler config samplers are built from.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// Tokenizes `prompts` and runs the text encoder(s) on them as one batch; returns the
    /// hidden states `[prompts, 77, D]` (and SDXL's pooled embeddings), and any truncation
    /// warnings.
    ///
    /// SD 1.x/2.x: the last hidden state (SD 2's config already drops OpenCLIP's last layer).
    /// SDXL: both encoders' `hidden_states[-2]` without the final norm, concatenated, and the
    /// second encoder's `text_embeds`; with `force_zeros_for_empty_prompt` an empty prompt is
    /// zeros (diffusers does that for the negative prompt, the only one that may be empty).
    pub async fn encode_prompts(
        &self,
        prompts: &[&str],
    ) -> Result<(PromptEmbeddings, Vec<String>)> {
        let mut warnings = Vec::new();
        let (ids, eos) = tokenize(&self.tokenizer, prompts, &mut warnings)?;
        let first = TokenIds {
            ids: &ids,
            eos: &eos,
            prompts: prompts.len(),
            len: self.tokenizer.max_length(),
        };
        let Some(tokenizer_2) = &self.tokenizer_2 else {
            let embeddings = self.networks.encode_text(first, None).await?;
            return Ok((embeddings, warnings));
        };
        // The second tokenizer cuts the same prompts: its warnings would repeat the first's.
        let (ids_2, eos_2) = tokenize(tokenizer_2, prompts, &mut Vec::new())?;
        let second = TokenIds {
            ids: &ids_2,
            eos: &eos_2,
            prompts: prompts.len(),
            len: tokenizer_2.max_length(),
        };
        let mut embeddings = self.networks.encode_text(first, Some(second)).await?;
        if self.force_zeros_for_empty_prompt {
            let row = embeddings.hidden.len() / prompts.len();
            for (i, prompt) in prompts.iter().enumerate() {
                if prompt.is_empty() {
                    embeddings.hidden[i * row..(i + 1) * row].fill(0.0);
                    if let Some(pooled) = &mut embeddings.pooled {
                        let width = pooled.len() / prompts.len();
                        pooled[i * width..(i + 1) * width].fill(0.0);
                    }
                }
            }
        }
        Ok((embeddings, warnings))
    }

    /// Whether a generation with `params` runs the UNet on `[negative, prompt]` pairs:
    /// guidance above 1, except for LCM-distilled UNets, which take the guidance scale as an
    /// embedding instead (diffusers' `LatentConsistencyModelPipeline` has no CFG batch).
    pub fn uses_cfg(&self, params: &GenerationParams) -> bool {
        params.uses_cfg() && self.unet_config().time_cond_proj_dim.is_none()
    }

    /// One UNet call on the host-side `latents` `[B, C, h, w]` at timestep `t` with the
    /// conditioning in `inputs` (one row per latent); returns the prediction.
    pub async fn predict_noise(
        &self,
        latents: &[f32],
        shape: [usize; 4],
        t: f32,
        inputs: &UNetInputs,
    ) -> Result<Vec<f32>> {
        let unet = self.networks.prepare_unet(inputs)?;
        unet.predict(latents, shape, t).await
    }

    /// Decodes latents `[4, h, w]` (as the sampler leaves them) to an NHWC image in [0, 1].
    pub async fn decode(&self, latents: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        let scale = self.networks.configs().vae.scaling_factor as f32;
        let scaled: Vec<f32> = latents.iter().map(|v| v / scale).collect();
        let nchw = self.networks.decode(&scaled, h, w).await?;
        let (height, width) = (h * VAE_SCALE as usize, w * VAE_SCALE as usize);
        let plane = height * width;
        let mut nhwc = vec![0.0; 3 * plane];
        for (i, pixel) in nhwc.chunks_mut(3).enumerate() {
            for (c, v) in pixel.iter_mut().enumerate() {
                *v = (nchw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            }
        }
        Ok(nhwc)
    }

    /// Encodes an image `[3, H, W]` in [-1, 1] with the VAE encoder; returns the latent
    /// distribution's mean and log-variance (clamped to [-30, 20] as diffusers'
    /// `DiagonalGaussianDistribution`), each `[4, H/8, W/8]`, before the scaling factor.
    pub async fn encode_image(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut moments = self.networks.encode_image(image, height, width).await?;
        let half = moments.len() / 2;
        let logvar = moments.split_off(half);
        Ok((
            moments,
            logvar.iter().map(|v| v.clamp(-30.0, 20.0)).collect(),
        ))
    }

    /// The input image's latents, times the VAE's scaling factor: the distribution's mean, or
    /// a sample `mean + exp(logvar / 2) * noise` with `noise` drawn from `rng`.
    async fn image_latents(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        rng: Option<&mut NoiseRng>,
    ) -> Result<Vec<f32>> {
        let (mean, logvar) = self.encode_image(image, height, width).await?;
        let scale = self.networks.configs().vae.scaling_factor as f32;
        Ok(match rng {
            None => mean.iter().map(|m| m * scale).collect(),
            Some(rng) => {
                let noise = rng.normals(mean.len());
                mean.iter()
                    .zip(&logvar)
                    .zip(&noise)
                    .map(|((m, lv), n)| (m + (0.5 * lv).exp() * n) * scale)
                    .collect()
            }
        })
    }

    /// The most images that go through the UNet together on this device (1 to `count`).
    pub fn images_per_unet_call(&self, width: u32, height: u32, cfg: bool, count: u32) -> u32 {
        self.networks
            .images_per_unet_call(width, height, cfg, count)
            .clamp(1, count.max(1))
    }

    /// Generates `params.count` images from the prompt, and from an input image (img2img) and
    /// a mask (inpainting) when `inputs` has them. `on_stage` hears every stage; `on_step`
    /// (tests, previews) sees each image's latents after every step.
    pub async fn generate(
        &self,
        params: &GenerationParams,
        inputs: &Inputs<'_>,
        on_stage: &mut dyn FnMut(Stage),
        on_step: Option<StepObserver<'_>>,
    ) -> Result<Generated> {
        self.generate_cancellable(params, inputs, on_stage, on_step, &|| false)
            .await
    }

    /// [`Self::generate`] that asks `cancelled` before every step and before decoding, and
    /// stops with [`ModelError::Cancelled`] when it says so (the browser's `AbortSignal`).
    ///
    /// As diffusers' pipelines: text to image (`StableDiffusionPipeline`) without an input
    /// image; img2img (`StableDiffusionImg2ImgPipeline`) with one: the sampler skips the first
    /// `steps * (1 - strength)` steps and starts from the image's latents noised to the first
    /// remaining step by the sampler's own `add_noise`; inpainting
    /// (`StableDiffusionInpaintPipeline`) with a mask: a 4-channel UNet gets the known region
    /// blended back after every step at the next step's noise level (and the image's own latents
    /// after the last), a 9-channel inpainting UNet gets the mask and the masked image's latents
    /// as extra input channels. At strength 1 inpainting starts from pure noise.
    pub async fn generate_cancellable(
        &self,
        params: &GenerationParams,
        inputs: &Inputs<'_>,
        on_stage: &mut dyn FnMut(Stage),
        mut on_step: Option<StepObserver<'_>>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generated> {
        let check = || {
            if cancelled() {
                Err(ModelError::Cancelled)
            } else {
                Ok(())
            }
        };
        let mut params = params.clone();
        params.latents_len = inputs.initial_latents.map(<[f32]>::len);
        params.validate()?;
        if inputs.mask.is_some() && inputs.init_image.is_none() {
            return Err(ModelError::Input {
                field: "mask",
                message: "a mask needs an input image (init_image) to repaint".into(),
            });
        }
        let (h, w) = (
            (params.height / VAE_SCALE) as usize,
            (params.width / VAE_SCALE) as usize,
        );
        let cfg = self.uses_cfg(&params);
        let encodes =
            inputs.init_image.is_some() || self.unet_config().in_channels == INPAINT_UNET_CHANNELS;
        self.networks.check_size(RunSize {
            width: params.width,
            height: params.height,
            cfg,
            encodes,
        })?;
        let group = self.images_per_unet_call(params.width, params.height, cfg, params.count);

        check()?;
        on_stage(Stage::Encode);
        let prompts: Vec<&str> = if cfg {
            vec![&params.negative_prompt, &params.prompt]
        } else {
            vec![&params.prompt]
        };
        let (embeddings, warnings) = self.encode_prompts(&prompts).await?;
        let conditioning = self.conditioning(&params, inputs).await?;

        let mut out = Generated {
            images: Vec::new(),
            width: params.width,
            height: params.height,
            seeds: Vec::new(),
            latents: Vec::new(),
            pixels: Vec::new(),
            warnings,
        };
        let mut first = 0;
        while first < params.count {
            let images = group.min(params.count - first);
            let mut run =
                ImageGroup::new(self, &params, inputs, &conditioning, first, images).await?;
            let unet_inputs = unet_inputs(self, &params, &embeddings, images as usize)?;
            let unet = self.networks.prepare_unet(&unet_inputs)?;
            run.denoise(unet.as_ref(), on_stage, &mut on_step, &check)
                .await?;
            drop(unet);
            for (latents, seed) in run.latents.into_iter().zip(run.seeds) {
                check()?;
                on_stage(Stage::Decode);
                let pixels = self.decode(&latents, h, w).await?;
                out.images
                    .push(pixels.iter().map(|v| (v * 255.0).round() as u8).collect());
                out.pixels.push(pixels);
                out.latents.push(latents);
                out.seeds.push(seed);
            }
            first += images;
        }
        on_stage(Stage::Done);
        if out.images.is_empty() {
            return Err(ModelError::Shape("no image was generated".into()));
        }
        Ok(out)
    }

    /// Encodes what the input image and mask contribute, once for all images.
    async fn conditioning(
        &self,
        params: &GenerationParams,
        inputs: &Inputs<'_>,
    ) -> Result<Conditioning> {
        let (width, height) = (params.width, params.height);
        let (h, w) = ((height / VAE_SCALE) as usize, (width / VAE_SCALE) as usize);
        let inpainting_unet = self.unet_config().in_channels == INPAINT_UNET_CHANNELS;
        let unet_channels = self.unet_config().in_channels;
        if unet_channels != LATENT_CHANNELS && !inpainting_unet {
            return Err(ModelError::Unsupported {
                part: "unet",
                what: format!("in_channels {unet_channels} (4, or 9 for inpainting models)"),
            });
        }
        let image = inputs
            .init_image
            .map(|image| image_input::to_nchw(&image_input::resized_rgb(image, width, height)));
        // A 9-channel UNet always takes a mask: without one it repaints everything.
        let mask = match (inputs.mask, inpainting_unet) {
            (Some(mask), _) => Some(image_input::resized_mask(mask, width, height)),
            (None, true) => Some(GrayImage::from_pixel(width, height, image::Luma([255]))),
            (None, false) => None,
        };
        let image_latents = match &image {
            Some(pixels) if !params.sample_init_latents => Some(
                self.image_latents(pixels, height as usize, width as usize, None)
                    .await?,
            ),
            _ => None,
        };
        let unet_extra = match (&mask, inpainting_unet) {
            (Some(mask), true) => {
                let grey = vec![0.0; 3 * (width * height) as usize];
                let masked = image_input::masked_nchw(image.as_deref().unwrap_or(&grey), mask);
                let masked_latents = self
                    .image_latents(&masked, height as usize, width as usize, None)
                    .await?;
                let mut extra = image_input::latent_mask(mask, true);
                extra.extend(masked_latents);
                Some(extra)
            }
            _ => None,
        };
        let blend_mask = match (&mask, inpainting_unet) {
            (Some(mask), false) => Some(image_input::latent_mask(mask, false)),
            _ => None,
        };
        debug_assert!(blend_mask.as_ref().is_none_or(|m| m.len() == h * w));
        Ok(Conditioning {
            image,
            image_latents,
            unet_extra,
            blend_mask,
            inpainting: mask.is_some(),
        })
    }
}

/// `in_channels` of diffusers' inpainting UNets: latents, mask, masked-image latents.
const INPAINT_UNET_CHANNELS: usize = 9;

/// What the input image and mask contribute to every image of a generation.
struct Conditioning {
    /// The resized input image `[3, H, W]` in [-1, 1] (img2img and inpainting).
    image: Option<Vec<f32>>,
    /// Its latents (mean times the scaling factor), unless each image samples its own.
    image_latents: Option<Vec<f32>>,
    /// A 9-channel UNet's extra input: the mask `[1, h, w]` and the masked image's latents
    /// `[4, h, w]`, the same at every step.
    unet_extra: Option<Vec<f32>>,
    /// A 4-channel UNet's inpainting: the latent mask `[h, w]` (1 = repaint) blended with.
    blend_mask: Option<Vec<f32>>,
    /// Whether this is inpainting (decides what strength 1 starts from).
    inpainting: bool,
}

/// Images denoised together: one sampler, noise source and latents each.
struct ImageGroup {
    samplers: Vec<Box<dyn Sampler>>,
    rngs: Vec<NoiseRng>,
    seeds: Vec<u64>,
    latents: Vec<Vec<f32>>,
    /// The noise each image started from (the inpainting blend noises the known region with it).
    start_noise: Vec<Vec<f32>>,
    /// Each image's input latents (img2img, inpainting).
    image_latents: Vec<Option<Vec<f32>>>,
    /// The index into the samplers' timesteps of the first step run.
    start: usize,
    shape: (usize, usize),
    guidance_scale: f32,
    cfg: bool,
    unet_extra: Option<Vec<f32>>,
    blend_mask: Option<Vec<f32>>,
}

impl ImageGroup {
    /// Prepares images `first..first + images`: samplers, seeds, starting latents.
    async fn new(
        sd: &StableDiffusion,
        params: &GenerationParams,
        inputs: &Inputs<'_>,
        conditioning: &Conditioning,
        first: u32,
        images: u32,
    ) -> Result<Self> {
        let (h, w) = (
            (params.height / VAE_SCALE) as usize,
            (params.width / VAE_SCALE) as usize,
        );
        let latent_len = LATENT_CHANNELS * h * w;
        let mut group = Self {
            samplers: Vec::new(),
            rngs: Vec::new(),
            seeds: Vec::new(),
            latents: Vec::new(),
            start_noise: Vec::new(),
            image_latents: Vec::new(),
            start: 0,
            shape: (h, w),
            guidance_scale: params.guidance_scale,
            cfg: sd.uses_cfg(params),
            unet_extra: conditioning.unet_extra.clone(),
            blend_mask: conditioning.blend_mask.clone(),
        };
        for image in first..first + images {
            let seed = params.seed.wrapping_add(u64::from(image));
            let mut rng = NoiseRng::new(seed);
            let sampler = params.sampler.build(&sd.scheduler_config, params.steps)?;
            // diffusers draws the VAE sample (if any) before the starting noise.
            let image_latents = match (&conditioning.image, &conditioning.image_latents) {
                (_, Some(latents)) => Some(latents.clone()),
                (Some(pixels), None) => Some(
                    sd.image_latents(
                        pixels,
                        h * VAE_SCALE as usize,
                        w * VAE_SCALE as usize,
                        Some(&mut rng),
                    )
                    .await?,
                ),
                (None, None) => None,
            };
            let noise = match inputs.initial_latents {
                Some(all) => {
                    let i = image as usize;
                    all[i * latent_len..(i + 1) * latent_len].to_vec()
                }
                None => rng.normals(latent_len),
            };
            group.start = start_step(sampler.as_ref(), params, image_latents.is_some());
            let latents = match &image_latents {
                Some(x0) if !(conditioning.inpainting && params.strength >= 1.0) => {
                    if group.start < sampler.timesteps().len() {
                        sampler.add_noise(x0, &noise, group.start)?
                    } else {
                        x0.clone() // strength 0: the input itself
                    }
                }
                _ => {
                    let sigma = sampler.init_noise_sigma() as f32;
                    noise.iter().map(|v| v * sigma).collect()
                }
            };
            group.samplers.push(sampler);
            group.rngs.push(rng);
            group.seeds.push(seed);
            group.latents.push(latents);
            group.start_noise.push(noise);
            group.image_latents.push(image_latents);
        }
        Ok(group)
    }
}

impl ImageGroup {
    /// Runs the steps from `self.start` on all images of the group, one UNet call per step.
    async fn denoise(
        &mut self,
        unet: &dyn NoisePredictor,
        on_stage: &mut dyn FnMut(Stage),
        on_step: &mut Option<StepObserver<'_>>,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let timesteps = self.samplers[0].timesteps().to_vec();
        let total = timesteps.len().saturating_sub(self.start);
        on_stage(Stage::Diffusion { step: 0, total });
        let (h, w) = self.shape;
        let latent_len = LATENT_CHANNELS * h * w;
        let images = self.samplers.len();
        let extra_len = self.unet_extra.as_ref().map_or(0, Vec::len);
        let in_channels = LATENT_CHANNELS + extra_len / (h * w);
        for (done, step) in (self.start..timesteps.len()).enumerate() {
            check()?;
            // The UNet batch: every image's scaled latents (with a 9-channel UNet's mask and
            // masked-image latents after them), twice under CFG to match the context rows
            // `[negative x images, prompt x images]`.
            let mut input = Vec::with_capacity(2 * images * (latent_len + extra_len));
            for (sampler, latents) in self.samplers.iter().zip(&self.latents) {
                let mut scaled = latents.clone();
                sampler.scale_model_input(&mut scaled, step)?;
                input.extend(scaled);
                if let Some(extra) = &self.unet_extra {
                    input.extend_from_slice(extra);
                }
            }
            let batch = if self.cfg {
                input.extend_from_within(..);
                2 * images
            } else {
                images
            };
            let t = timesteps[step] as f32;
            let prediction = unet.predict(&input, [batch, in_channels, h, w], t).await?;
            for k in 0..images {
                let cond = &prediction[k * latent_len..(k + 1) * latent_len];
                let guided: Vec<f32> = if self.cfg {
                    let cond =
                        &prediction[(images + k) * latent_len..(images + k + 1) * latent_len];
                    let uncond = &prediction[k * latent_len..(k + 1) * latent_len];
                    uncond
                        .iter()
                        .zip(cond)
                        .map(|(u, c)| u + self.guidance_scale * (c - u))
                        .collect()
                } else {
                    cond.to_vec()
                };
                let rng = &mut self.rngs[k];
                let mut next =
                    self.samplers[k]
                        .step(&guided, step, &self.latents[k], &mut |n| rng.normals(n))?;
                if let (Some(mask), Some(x0)) = (&self.blend_mask, &self.image_latents[k]) {
                    // diffusers: the known region, noised to the next step's level (the clean
                    // latents after the last step), replaces what the sampler made of it.
                    let known = if step + 1 < timesteps.len() {
                        self.samplers[k].add_noise(x0, &self.start_noise[k], step + 1)?
                    } else {
                        x0.clone()
                    };
                    for (i, (x, proper)) in next.iter_mut().zip(&known).enumerate() {
                        let m = mask[i % (h * w)];
                        *x = (1.0 - m) * proper + m * *x;
                    }
                }
                if let Some(f) = on_step.as_mut() {
                    f(done, &next);
                }
                self.latents[k] = next;
            }
            on_stage(Stage::Diffusion {
                step: done + 1,
                total,
            });
        }
        Ok(())
    }
}

/// diffusers' `get_timesteps`: `int(steps * strength)` steps run (all without an input image);
/// the first one's index into the sampler's timesteps, which list `order` model calls per step.
/// (A hair added before flooring keeps `0.7 * 20` at 14 although `0.7f32` is a bit below 0.7.)
fn start_step(sampler: &dyn Sampler, params: &GenerationParams, from_image: bool) -> usize {
    if !from_image {
        return 0;
    }
    let run = ((params.steps as f64 * f64::from(params.strength) + 1e-6).floor() as usize)
        .min(params.steps);
    (params.steps - run) * sampler.order()
}

/// What every UNet call of an image group is conditioned on: the context rows
/// `[negative x images, prompt x images]` (or `[prompt x images]` without CFG), and LCM's
/// guidance embedding or SDXL's pooled embeddings and time ids when the UNet takes them.
fn unet_inputs(
    sd: &StableDiffusion,
    params: &GenerationParams,
    embeddings: &PromptEmbeddings,
    images: usize,
) -> Result<UNetInputs> {
    let [prompts, len, dim] = embeddings.shape;
    let context = repeat_rows(&embeddings.hidden, prompts, images);
    let rows = prompts * images;
    let config = sd.unet_config();
    let timestep_cond = config
        .time_cond_proj_dim
        .map(|dim| guidance_scale_embedding(params.guidance_scale - 1.0, dim).repeat(rows));
    let (text_embeds, time_ids) = match (config.addition_embed_type.as_deref(), &embeddings.pooled)
    {
        (Some(_), Some(pooled)) => (
            Some(repeat_rows(pooled, prompts, images)),
            Some(sdxl_time_ids(params.width, params.height).repeat(rows)),
        ),
        (Some(kind), None) => {
            return Err(ModelError::Unsupported {
                part: "unet",
                what: format!(
                    "addition_embed_type {kind:?} without a second text encoder's pooled \
                     embeddings (text_encoder_2 with a text_projection)"
                ),
            });
        }
        (None, _) => (None, None),
    };
    Ok(UNetInputs {
        context,
        context_shape: [rows, len, dim],
        timestep_cond,
        text_embeds,
        time_ids,
    })
}

/// Tokenizes `prompts` with one tokenizer: the ids of all of them, each row's end-token position,
/// and a warning for each prompt cut to fit.
fn tokenize(
    tokenizer: &ClipTokenizer,
    prompts: &[&str],
    warnings: &mut Vec<String>,
) -> Result<(Vec<u32>, Vec<usize>)> {
    let mut ids = Vec::new();
    let mut eos = Vec::new();
    for prompt in prompts {
        let encoded = tokenizer.encode(prompt)?;
        if encoded.truncated {
            warnings.push(format!(
                "the prompt is longer than {} tokens; this part was cut: {:?}",
                tokenizer.max_length(),
                encoded.removed_text
            ));
        }
        eos.push(encoded.tokens_used - 1);
        ids.extend(encoded.ids);
    }
    Ok((ids, eos))
}

/// A pipeline's tokenizer from its folder (`tokenizer`, `tokenizer_2`): `tokenizer.json`, and
/// `tokenizer_config.json` for the pad token when present.
fn load_tokenizer(source: &ModelSource, folder: &str) -> Result<ClipTokenizer> {
    let config_file = format!("{folder}/tokenizer_config.json");
    let config = if source.has(&config_file) {
        Some(source.read(&config_file)?)
    } else {
        None
    };
    Ok(ClipTokenizer::from_pipeline_files(
        &tokenizer_json(source, folder)?,
        config.as_deref(),
    )?)
}

/// `<folder>/tokenizer.json`; natively, for a folder with only the slow tokenizer's
/// `vocab.json` + `merges.txt` (the hub's SD repositories), the built-in CLIP `tokenizer.json`
/// once those are checked to be CLIP's. (Not in the wasm build: web models carry
/// `tokenizer.json`, which the converter adds the same way, and the browser download stays
/// 3.6 MB smaller.)
fn tokenizer_json(source: &ModelSource, folder: &str) -> Result<Vec<u8>> {
    let file = format!("{folder}/tokenizer.json");
    #[cfg(not(target_arch = "wasm32"))]
    if !source.has(&file) && source.has(&format!("{folder}/vocab.json")) {
        let vocab = source.read(&format!("{folder}/vocab.json"))?;
        let merges = source.read(&format!("{folder}/merges.txt"))?;
        return Ok(sd_weights::tokenizer::clip_tokenizer_json_for(&vocab, &merges)?.to_vec());
    }
    source.read(&file)
}

/// `rows` (`prompts` equal rows) with each row repeated `images` times, in order.
fn repeat_rows(rows: &[f32], prompts: usize, images: usize) -> Vec<f32> {
    let row_len = rows.len() / prompts.max(1);
    let mut out = Vec::with_capacity(rows.len() * images);
    for row in rows.chunks_exact(row_len.max(1)) {
        for _ in 0..images {
            out.extend_from_slice(row);
        }
    }
    out
}
