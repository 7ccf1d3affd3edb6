//! Text to image, as diffusers' `StableDiffusionPipeline.__call__` does it: encode the prompt
//! and the negative prompt, start from seeded (or given) noise scaled by the sampler's
//! `init_noise_sigma`, run the UNet on the CFG batch `[negative, prompt]` at every step,
//! combine with the guidance scale, step the sampler, and decode the final latents.
//!
//! The UNet, text encoder and VAE run on the GPU; the sampler's arithmetic on the few thousand
//! latent values runs on the CPU between UNet calls.

use std::sync::Arc;

use sd_core::config::{
    AutoencoderKLConfig, CLIPTextConfig, SchedulerConfig, UNet2DConditionConfig,
};
use sd_core::params::{GenerationParams, LATENT_CHANNELS, VAE_SCALE};
use sd_core::progress::Stage;
use sd_core::rng::NoiseRng;
use sd_kernels::{DType, GpuContext, Tensor};
use sd_weights::ClipTokenizer;

use crate::clip::{CLIPTextModel, TextOutput};
use crate::layers::Params;
use crate::plan::{DeviceLimits, ModelConfigs, PlanRequest, plan};
use crate::source::ModelSource;
use crate::unet::UNet2DConditionModel;
use crate::vae::VaeDecoder;
use crate::{ModelError, Result};

/// Sees an image's latents after each denoising step (step index, latents).
pub type StepObserver<'a> = &'a mut dyn FnMut(usize, &[f32]);

/// A loaded text-to-image model: tokenizer, text encoder, UNet, VAE decoder and the
/// scheduler config the samplers are built from.
#[derive(Debug)]
pub struct StableDiffusion {
    ctx: Arc<GpuContext>,
    tokenizer: ClipTokenizer,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
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
        let tokenizer_config = if source.has("tokenizer/tokenizer_config.json") {
            Some(source.read("tokenizer/tokenizer_config.json")?)
        } else {
            None
        };
        let tokenizer = ClipTokenizer::from_pipeline_files(
            &source.read("tokenizer/tokenizer.json")?,
            tokenizer_config.as_deref(),
        )?;

        on_component("text_encoder");
        let weights = source.weights("text_encoder")?;
        let text_encoder = CLIPTextModel::load(
            &text_config,
            &Params {
                ctx: &ctx,
                scope: weights.root(),
                matrices,
            },
        )?;
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
        let vae_decoder = VaeDecoder::load(
            &vae_config,
            &Params {
                ctx: &ctx,
                scope: weights.root(),
                matrices,
            },
        )?;
        Ok(Self {
            ctx,
            tokenizer,
            text_encoder,
            unet,
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

    /// The scheduler config samplers are built from.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// Plans the generation's buffers for this device before any GPU work, so a size that
    /// cannot run fails at once, naming the buffer that does not fit even in chunks. The
    /// executors split what the plan splits: VAE decoder tensors into channel chunks, the UNet's
    /// feed-forward into row chunks.
    fn check_plan(&self, width: u32, height: u32, cfg: bool) -> Result<()> {
        let limits = self.ctx.limits();
        let device = DeviceLimits {
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        };
        let configs = ModelConfigs {
            text_encoder: self.text_encoder.config(),
            unet: self.unet.config(),
            vae: &self.vae_config,
        };
        let request = PlanRequest {
            width,
            height,
            images: 1,
            classifier_free_guidance: cfg,
        };
        plan(&configs, &request, &device)?;
        Ok(())
    }

    /// Tokenizes `prompts` and runs the text encoder on them as one batch; returns the hidden
    /// states `[prompts, 77, D]` on the GPU and any truncation warnings.
    pub async fn encode_prompts(&self, prompts: &[&str]) -> Result<(Tensor, Vec<String>)> {
        let mut ids = Vec::new();
        let mut warnings = Vec::new();
        for prompt in prompts {
            let encoded = self.tokenizer.encode(prompt)?;
            if encoded.truncated {
                warnings.push(format!(
                    "the prompt is longer than {} tokens; this part was cut: {:?}",
                    self.tokenizer.max_length(),
                    encoded.removed_text
                ));
            }
            ids.extend(encoded.ids);
        }
        let len = self.tokenizer.max_length();
        let ids_gpu = self.ctx.upload_u32(&ids, &[prompts.len(), len])?;
        let mut batch = self.ctx.batch();
        let hidden = self
            .text_encoder
            .forward(&mut batch, &ids_gpu, &ids, TextOutput::Last)?;
        batch.submit().await?;
        Ok((hidden, warnings))
    }

    /// One UNet call on the host-side `latents` `[B, 4, h, w]` at timestep `t` with `context`
    /// `[B, 77, D]`; returns the prediction.
    pub async fn predict_noise(
        &self,
        latents: &[f32],
        shape: [usize; 4],
        t: f32,
        context: &Tensor,
    ) -> Result<Vec<f32>> {
        let sample = self.ctx.upload_f32(latents, &shape)?;
        let timesteps = self.ctx.upload_f32(&vec![t; shape[0]], &[shape[0]])?;
        let mut batch = self.ctx.batch();
        let out = self
            .unet
            .forward(&mut batch, &sample, &timesteps, context)?;
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

    /// Generates `params.count` images. `initial_latents` (unscaled unit noise, `count` images
    /// of `[4, h/8, w/8]`) replaces the seeded noise. `on_stage` hears every stage;
    /// `on_step` (tests, previews) sees each image's latents after every step.
    pub async fn generate(
        &self,
        params: &GenerationParams,
        initial_latents: Option<&[f32]>,
        on_stage: &mut dyn FnMut(Stage),
        on_step: Option<StepObserver<'_>>,
    ) -> Result<Generated> {
        self.generate_cancellable(params, initial_latents, on_stage, on_step, &|| false)
            .await
    }

    /// [`Self::generate`] that asks `cancelled` before every step and before decoding, and
    /// stops with [`ModelError::Cancelled`] when it says so (the browser's `AbortSignal`).
    pub async fn generate_cancellable(
        &self,
        params: &GenerationParams,
        initial_latents: Option<&[f32]>,
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
        params.latents_len = initial_latents.map(<[f32]>::len);
        params.validate()?;
        let (h, w) = (
            (params.height / VAE_SCALE) as usize,
            (params.width / VAE_SCALE) as usize,
        );
        let latent_len = LATENT_CHANNELS * h * w;
        let cfg = params.uses_cfg();
        self.check_plan(params.width, params.height, cfg)?;

        check()?;
        on_stage(Stage::Encode);
        let prompts: Vec<&str> = if cfg {
            vec![&params.negative_prompt, &params.prompt]
        } else {
            vec![&params.prompt]
        };
        let (context, warnings) = self.encode_prompts(&prompts).await?;
        let batch = prompts.len();

        let mut out = Generated {
            images: Vec::new(),
            width: params.width,
            height: params.height,
            seeds: Vec::new(),
            latents: Vec::new(),
            pixels: Vec::new(),
            warnings,
        };
        for image in 0..params.count as usize {
            let seed = params.seed.wrapping_add(image as u64);
            let mut rng = NoiseRng::new(seed);
            let mut sampler = params.sampler.build(&self.scheduler_config, params.steps)?;
            let noise = match initial_latents {
                Some(all) => all[image * latent_len..(image + 1) * latent_len].to_vec(),
                None => rng.normals(latent_len),
            };
            let sigma = sampler.init_noise_sigma() as f32;
            let mut latents: Vec<f32> = noise.iter().map(|v| v * sigma).collect();
            let timesteps = sampler.timesteps().to_vec();
            on_stage(Stage::Diffusion {
                step: 0,
                total: timesteps.len(),
            });
            for (step, &t) in timesteps.iter().enumerate() {
                check()?;
                let mut input = latents.clone();
                sampler.scale_model_input(&mut input, step)?;
                let input: Vec<f32> = input
                    .iter()
                    .copied()
                    .cycle()
                    .take(batch * latent_len)
                    .collect();
                let prediction = self
                    .predict_noise(&input, [batch, LATENT_CHANNELS, h, w], t as f32, &context)
                    .await?;
                let guided: Vec<f32> = if cfg {
                    let (uncond, cond) = prediction.split_at(latent_len);
                    uncond
                        .iter()
                        .zip(cond)
                        .map(|(u, c)| u + params.guidance_scale * (c - u))
                        .collect()
                } else {
                    prediction
                };
                latents = sampler.step(&guided, step, &latents, &mut |n| rng.normals(n))?;
                if let Some(f) = on_step.as_mut() {
                    f(step, &latents);
                }
                on_stage(Stage::Diffusion {
                    step: step + 1,
                    total: timesteps.len(),
                });
            }
            check()?;
            on_stage(Stage::Decode);
            let pixels = self.decode(&latents, h, w).await?;
            out.images
                .push(pixels.iter().map(|v| (v * 255.0).round() as u8).collect());
            out.pixels.push(pixels);
            out.latents.push(latents);
            out.seeds.push(seed);
        }
        on_stage(Stage::Done);
        if out.images.is_empty() {
            return Err(ModelError::Shape("no image was generated".into()));
        }
        Ok(out)
    }
}
