//! Text to image, as diffusers' `StableDiffusionPipeline.__call__` does it: encode the prompt
//! and the negative prompt, start from seeded (or given) noise scaled by the sampler's
//! `init_noise_sigma`, run the UNet on the CFG batch `[negative, prompt]` at every step,
//! combine with the guidance scale, step the sampler, and decode the final latents.
//!
//! The UNet, text encoder and VAE run on the GPU; the sampler's arithmetic on the few thousand
//! latent values runs on the CPU between UNet calls.

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
use sd_kernels::{DType, GpuContext, Tensor, ops};
use sd_weights::ClipTokenizer;

use crate::clip::{CLIPTextModel, TextOutput};
use crate::image_input;
use crate::layers::Params;
use crate::plan::{DeviceLimits, MemoryPlan, ModelConfigs, Part, PlanRequest, plan};
use crate::source::ModelSource;
use crate::unet::{UNet2DConditionModel, UNetConditioning};
use crate::vae::{VaeDecoder, VaeEncoder};
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

/// A loaded model: tokenizer(s), text encoder(s), UNet, VAE encoder and decoder, and the
/// scheduler config the samplers are built from.
#[derive(Debug)]
pub struct StableDiffusion {
    ctx: Arc<GpuContext>,
    tokenizer: ClipTokenizer,
    text_encoder: CLIPTextModel,
    /// SDXL's second tokenizer and text encoder (`CLIPTextModelWithProjection`).
    text_encoder_2: Option<(ClipTokenizer, CLIPTextModel)>,
    /// `force_zeros_for_empty_prompt` (SDXL): an empty negative prompt is zero embeddings
    /// rather than the encoding of "".
    force_zeros_for_empty_prompt: bool,
    unet: UNet2DConditionModel,
    vae_encoder: VaeEncoder,
    vae_decoder: VaeDecoder,
    vae_config: AutoencoderKLConfig,
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
    /// Loads every part of the model from `source` onto `ctx`, weight matrices stored as
    /// `matrices` (f16 normally; f32 for parity tests).
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
        let text_config = CLIPTextConfig::from_json(
            "text_encoder/config.json",
            &source.read_text("text_encoder/config.json")?,
        )?;
        let unet_config = UNet2DConditionConfig::from_json(
            "unet/config.json",
            &source.read_text("unet/config.json")?,
        )?;
        let vae_config = AutoencoderKLConfig::from_json(
            "vae/config.json",
            &source.read_text("vae/config.json")?,
        )?;
        let scheduler_config = SchedulerConfig::from_json(
            "scheduler/scheduler_config.json",
            &source.read_text("scheduler/scheduler_config.json")?,
        )?;
        let tokenizer = load_tokenizer(source, "tokenizer")?;
        let index = if source.has("model_index.json") {
            Some(ModelIndex::from_json(
                "model_index.json",
                &source.read_text("model_index.json")?,
            )?)
        } else {
            None
        };

        on_component("text_encoder");
        let text_encoder = load_text_encoder(&ctx, source, "text_encoder", &text_config, matrices)?;
        let text_encoder_2 = if source.has("text_encoder_2/config.json") {
            on_component("text_encoder_2");
            let config = CLIPTextConfig::from_json(
                "text_encoder_2/config.json",
                &source.read_text("text_encoder_2/config.json")?,
            )?;
            Some((
                load_tokenizer(source, "tokenizer_2")?,
                load_text_encoder(&ctx, source, "text_encoder_2", &config, matrices)?,
            ))
        } else {
            None
        };
        // diffusers' `StableDiffusionXLPipeline` defaults `force_zeros_for_empty_prompt` to true.
        let force_zeros_for_empty_prompt = index
            .and_then(|index| index.force_zeros_for_empty_prompt)
            .unwrap_or(text_encoder_2.is_some());
        on_component("unet");
        let weights = source.weights("unet")?;
        let unet = UNet2DConditionModel::load(
            &unet_config,
            &Params {
                ctx: &ctx,
                scope: weights.root(),
                matrices,
            },
        )?;
        on_component("vae");
        let weights = source.weights("vae")?;
        let vae_params = Params {
            ctx: &ctx,
            scope: weights.root(),
            matrices,
        };
        let vae_encoder = VaeEncoder::load(&vae_config, &vae_params)?;
        let vae_decoder = VaeDecoder::load(&vae_config, &vae_params)?;
        Ok(Self {
            ctx,
            tokenizer,
            text_encoder,
            text_encoder_2,
            force_zeros_for_empty_prompt,
            unet,
            vae_encoder,
            vae_decoder,
            vae_config,
            scheduler_config,
        })
    }

    /// The GPU context the model lives on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// The image size the model was trained at (width, height): the UNet's `sample_size`
    /// times the VAE's scale factor (512x512 for SD 1.5, 64x64 for the digits model).
    pub fn native_size(&self) -> (u32, u32) {
        use sd_core::config::OneOrMany;
        let (h, w) = match &self.unet.config().sample_size {
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
        if self.unet.config().time_cond_proj_dim.is_some() {
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
    /// hidden states `[prompts, 77, D]` (and SDXL's pooled embeddings) on the GPU, and any
    /// truncation warnings.
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
        let (ids, _) = tokenize(&self.tokenizer, prompts, &mut warnings)?;
        let len = self.tokenizer.max_length();
        let ids_gpu = self.ctx.upload_u32(&ids, &[prompts.len(), len])?;
        let mut batch = self.ctx.batch();
        let Some((tokenizer_2, text_encoder_2)) = &self.text_encoder_2 else {
            let hidden = self
                .text_encoder
                .forward(&mut batch, &ids_gpu, &ids, TextOutput::Last)?;
            batch.submit().await?;
            return Ok((
                PromptEmbeddings {
                    hidden,
                    pooled: None,
                },
                warnings,
            ));
        };
        let penultimate = TextOutput::SkipRaw { skip: 1 };
        let first = self
            .text_encoder
            .forward(&mut batch, &ids_gpu, &ids, penultimate)?;
        // The second tokenizer cuts the same prompts: its warnings would repeat the first's.
        let (ids_2, eos) = tokenize(tokenizer_2, prompts, &mut Vec::new())?;
        let ids_2_gpu = self
            .ctx
            .upload_u32(&ids_2, &[prompts.len(), tokenizer_2.max_length()])?;
        let second = text_encoder_2.forward_with_pooled(
            &mut batch,
            &ids_2_gpu,
            &ids_2,
            penultimate,
            &eos,
        )?;
        let pooled = second.pooled.ok_or_else(|| {
            ModelError::Shape("text_encoder_2 has no text_projection (pooled output)".into())
        })?;
        let (rows, d1, d2) = (
            prompts.len() * len,
            first.shape()[2],
            second.hidden.shape()[2],
        );
        // Concatenating along the last axis is a channel concat of `[rows, D]` matrices.
        let hidden = self.ctx.empty(&[rows, d1 + d2], DType::F32)?;
        ops::concat_channels(
            &mut batch,
            &first.reshape(&[rows, d1])?,
            &second.hidden.reshape(&[rows, d2])?,
            &hidden,
        )?;
        batch.submit().await?;
        let mut hidden = hidden.reshape(&[prompts.len(), len, d1 + d2])?;
        let mut pooled = pooled;
        if self.force_zeros_for_empty_prompt && prompts.iter().any(|p| p.is_empty()) {
            let mut rows = self.ctx.read_f32(&hidden).await?;
            let mut pooled_rows = self.ctx.read_f32(&pooled).await?;
            let (row, pooled_row) = (len * (d1 + d2), pooled_rows.len() / prompts.len());
            for (i, prompt) in prompts.iter().enumerate() {
                if prompt.is_empty() {
                    rows[i * row..(i + 1) * row].fill(0.0);
                    pooled_rows[i * pooled_row..(i + 1) * pooled_row].fill(0.0);
                }
            }
            hidden = self.ctx.upload_f32(&rows, hidden.shape())?;
            pooled = self.ctx.upload_f32(&pooled_rows, pooled.shape())?;
        }
        Ok((
            PromptEmbeddings {
                hidden,
                pooled: Some(pooled),
            },
            warnings,
        ))
    }

    /// Whether a generation with `params` runs the UNet on `[negative, prompt]` pairs:
    /// guidance above 1, except for LCM-distilled UNets, which take the guidance scale as an
    /// embedding instead (diffusers' `LatentConsistencyModelPipeline` has no CFG batch).
    pub fn uses_cfg(&self, params: &GenerationParams) -> bool {
        params.uses_cfg() && self.unet.config().time_cond_proj_dim.is_none()
    }

    /// One UNet call on the host-side `latents` `[B, 4, h, w]` at timestep `t` with `context`
    /// `[B, 77, D]` and the extra conditioning the UNet takes (LCM, SDXL); returns the
    /// prediction.
    pub async fn predict_noise(
        &self,
        latents: &[f32],
        shape: [usize; 4],
        t: f32,
        context: &Tensor,
        cond: &UNetConditioning<'_>,
    ) -> Result<Vec<f32>> {
        let sample = self.ctx.upload_f32(latents, &shape)?;
        let timesteps = self.ctx.upload_f32(&vec![t; shape[0]], &[shape[0]])?;
        let mut batch = self.ctx.batch();
        let out = self
            .unet
            .forward(&mut batch, &sample, &timesteps, context, cond)?;
        batch.submit().await?;
        Ok(self.ctx.read_f32(&out).await?)
    }

    /// Decodes latents `[4, h, w]` (as the sampler leaves them) to an NHWC image in [0, 1].
    pub async fn decode(&self, latents: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        let scale = self.vae_config.scaling_factor as f32;
        let scaled: Vec<f32> = latents.iter().map(|v| v / scale).collect();
        let z = self.ctx.upload_f32(&scaled, &[1, LATENT_CHANNELS, h, w])?;
        let mut batch = self.ctx.batch();
        let image = self.vae_decoder.forward(&mut batch, &z)?;
        batch.submit().await?;
        let nchw = self.ctx.read_f32(&image).await?;
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
        let x = self.ctx.upload_f32(image, &[1, 3, height, width])?;
        let mut batch = self.ctx.batch();
        let moments = self.vae_encoder.forward(&mut batch, &x)?;
        batch.submit().await?;
        let mut moments = self.ctx.read_f32(&moments).await?;
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
        let scale = self.vae_config.scaling_factor as f32;
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

    /// The most images that go through the UNet together: the largest group up to `count`
    /// whose plan fits the device and whose activations stay within
    /// [`BATCH_ACTIVATION_BUDGET`]; 1 when even two do not.
    pub fn images_per_unet_call(&self, width: u32, height: u32, cfg: bool, count: u32) -> u32 {
        (2..=count)
            .rev()
            .find(|&images| {
                self.plan(width, height, cfg, images).is_ok_and(|plan| {
                    plan.peak_bytes.saturating_sub(plan.weight_bytes) <= BATCH_ACTIVATION_BUDGET
                })
            })
            .unwrap_or(1)
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
        let plan = self.plan(params.width, params.height, cfg, 1)?;
        let encodes =
            inputs.init_image.is_some() || self.unet.config().in_channels == INPAINT_UNET_CHANNELS;
        let encoder_splits = plan
            .part(Part::VaeEncoder)
            .is_some_and(|p| p.tensors.iter().any(|t| t.chunks.len() > 1));
        if encodes && encoder_splits {
            return Err(ModelError::Input {
                field: "init_image",
                message: format!(
                    "{}x{} is too large for the VAE encoder on this device: its activations \
                     exceed one buffer binding and the encoder does not split them yet; use a \
                     smaller width and height",
                    params.width, params.height
                ),
            });
        }
        let group = self.images_per_unet_call(params.width, params.height, cfg, params.count);

        check()?;
        on_stage(Stage::Encode);
        let prompts: Vec<&str> = if cfg {
            vec![&params.negative_prompt, &params.prompt]
        } else {
            vec![&params.prompt]
        };
        let (embeddings, warnings) = self.encode_prompts(&prompts).await?;
        let context_rows = self.ctx.read_f32(&embeddings.hidden).await?;
        let pooled_rows = match &embeddings.pooled {
            Some(pooled) => Some(self.ctx.read_f32(pooled).await?),
            None => None,
        };
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
            let unet_inputs = UNetInputs::new(
                self,
                &params,
                &embeddings,
                &context_rows,
                pooled_rows.as_deref(),
                images as usize,
            )?;
            run.denoise(self, &unet_inputs, on_stage, &mut on_step, &check)
                .await?;
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
        let inpainting_unet = self.unet.config().in_channels == INPAINT_UNET_CHANNELS;
        let unet_channels = self.unet.config().in_channels;
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

    /// Plans the generation's buffers for this device before any GPU work, so a size that
    /// cannot run fails at once, naming the buffer that does not fit even in chunks. The
    /// executors split what the plan splits: VAE decoder tensors into channel chunks, the UNet's
    /// feed-forward into row chunks.
    fn plan(&self, width: u32, height: u32, cfg: bool, images: u32) -> Result<MemoryPlan> {
        let limits = self.ctx.limits();
        let device = DeviceLimits {
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        };
        let configs = ModelConfigs {
            text_encoder: self.text_encoder.config(),
            text_encoder_2: self
                .text_encoder_2
                .as_ref()
                .map(|(_, model)| model.config()),
            unet: self.unet.config(),
            vae: &self.vae_config,
        };
        let request = PlanRequest {
            width,
            height,
            images,
            classifier_free_guidance: cfg,
        };
        Ok(plan(&configs, &request, &device)?)
    }
}

/// The activations the UNet may use at once when images are batched (weights not counted):
/// more images per call only while a call's plan stays within this. 1 GiB leaves room on any
/// GPU that holds SD 1.5 at all; past it, images run in smaller groups, one after the other.
pub const BATCH_ACTIVATION_BUDGET: u64 = 1 << 30;

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
        sd: &StableDiffusion,
        unet_inputs: &UNetInputs,
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
            let prediction = sd
                .predict_noise(
                    &input,
                    [batch, in_channels, h, w],
                    t,
                    &unet_inputs.context,
                    &unet_inputs.conditioning(),
                )
                .await?;
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

/// The text encoders' output for a batch of prompts, on the GPU.
#[derive(Debug)]
pub struct PromptEmbeddings {
    /// `encoder_hidden_states` `[prompts, 77, D]`.
    pub hidden: Tensor,
    /// SDXL's pooled `text_embeds` `[prompts, pooled]`.
    pub pooled: Option<Tensor>,
}

/// What every UNet call of an image group is conditioned on, uploaded once per group: the
/// context rows `[negative x images, prompt x images]` (or `[prompt x images]` without CFG),
/// and LCM's guidance embedding or SDXL's pooled embeddings and time ids when the UNet takes them.
struct UNetInputs {
    context: Tensor,
    timestep_cond: Option<Tensor>,
    text_embeds: Option<Tensor>,
    time_ids: Option<Tensor>,
}

impl UNetInputs {
    fn new(
        sd: &StableDiffusion,
        params: &GenerationParams,
        embeddings: &PromptEmbeddings,
        context_rows: &[f32],
        pooled_rows: Option<&[f32]>,
        images: usize,
    ) -> Result<Self> {
        let ctx = &sd.ctx;
        let context = repeat_rows(ctx, context_rows, embeddings.hidden.shape(), images)?;
        let rows = context.shape()[0];
        let config = sd.unet.config();
        let timestep_cond = match config.time_cond_proj_dim {
            Some(dim) => {
                let w = guidance_scale_embedding(params.guidance_scale - 1.0, dim);
                Some(ctx.upload_f32(&w.repeat(rows), &[rows, dim])?)
            }
            None => None,
        };
        let (text_embeds, time_ids) = match (config.addition_embed_type.as_deref(), pooled_rows) {
            (Some(_), Some(pooled)) => {
                let prompts = embeddings.hidden.shape()[0];
                let width = pooled.len() / prompts;
                let text_embeds = repeat_rows(ctx, pooled, &[prompts, 1, width], images)?
                    .reshape(&[rows, width])?;
                let ids = sdxl_time_ids(params.width, params.height);
                let time_ids = ctx.upload_f32(&ids.repeat(rows), &[rows, ids.len()])?;
                (Some(text_embeds), Some(time_ids))
            }
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
        Ok(Self {
            context,
            timestep_cond,
            text_embeds,
            time_ids,
        })
    }

    fn conditioning(&self) -> UNetConditioning<'_> {
        UNetConditioning {
            timestep_cond: self.timestep_cond.as_ref(),
            text_embeds: self.text_embeds.as_ref(),
            time_ids: self.time_ids.as_ref(),
        }
    }
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

/// A text encoder component (`text_encoder`, `text_encoder_2`) onto the GPU.
fn load_text_encoder(
    ctx: &Arc<GpuContext>,
    source: &ModelSource,
    component: &str,
    config: &CLIPTextConfig,
    matrices: DType,
) -> Result<CLIPTextModel> {
    let weights = source.weights(component)?;
    CLIPTextModel::load(
        config,
        &Params {
            ctx,
            scope: weights.root(),
            matrices,
        },
    )
}

/// The text hidden states `rows` (of `shape` `[prompts, L, D]`, on the host) with each prompt's row
/// repeated `images` times, uploaded: `[prompts x images, L, D]`.
fn repeat_rows(ctx: &GpuContext, rows: &[f32], shape: &[usize], images: usize) -> Result<Tensor> {
    let &[prompts, len, dim] = shape else {
        return Err(ModelError::Shape(format!(
            "text hidden states must be [prompts, L, D], are {shape:?}"
        )));
    };
    let row_len = len * dim;
    let mut out = Vec::with_capacity(rows.len() * images);
    for row in rows.chunks_exact(row_len) {
        for _ in 0..images {
            out.extend_from_slice(row);
        }
    }
    ctx.upload_f32(&out, &[prompts * images, len, dim])
        .map_err(ModelError::from)
}
