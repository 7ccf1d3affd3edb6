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
use sd_core::config::{SchedulerConfig, UNet2DConditionConfig};
use sd_core::params::{GenerationParams, ModelDefaults, VAE_SCALE};
use sd_core::progress::Stage;
use sd_core::sampler::SamplerKind;
use sd_kernels::GpuContext;
use sd_weights::ClipTokenizer;

use crate::backend::{DeviceKind, Networks, RunSize, UNetInputs};
use crate::gpu::GpuNetworks;
use crate::{ModelError, Result};

mod conditioning;
mod denoise;
mod load;
mod text;
mod vae_io;

use conditioning::INPAINT_UNET_CHANNELS;
use denoise::ImageGroup;
pub use load::PipelineFiles;
use text::unet_inputs;

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
            return Err(ModelError::NoImages);
        }
        Ok(out)
    }
}
