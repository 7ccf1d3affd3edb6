//! The denoising loop of a group of images: samplers, seeds and starting latents, then one UNet
//! call per step with guidance, each image's sampler step and the inpainting blend.

use sd_core::params::{GenerationParams, LATENT_CHANNELS, VAE_SCALE};
use sd_core::progress::Stage;
use sd_core::rng::NoiseRng;
use sd_core::sampler::Sampler;

use super::conditioning::Conditioning;
use super::{Inputs, StableDiffusion, StepObserver};
use crate::Result;
use crate::backend::{Blend, DenoiseLoop, NoisePredictor};

/// Images denoised together: one sampler, noise source and latents each.
pub(super) struct ImageGroup {
    pub(super) samplers: Vec<Box<dyn Sampler>>,
    pub(super) rngs: Vec<NoiseRng>,
    pub(super) seeds: Vec<u64>,
    pub(super) latents: Vec<Vec<f32>>,
    /// The noise each image started from (the inpainting blend noises the known region with it).
    pub(super) start_noise: Vec<Vec<f32>>,
    /// Each image's input latents (img2img, inpainting).
    pub(super) image_latents: Vec<Option<Vec<f32>>>,
    /// The index into the samplers' timesteps of the first step run.
    pub(super) start: usize,
    pub(super) shape: (usize, usize),
    pub(super) guidance_scale: f32,
    pub(super) cfg: bool,
    pub(super) unet_extra: Option<Vec<f32>>,
    pub(super) blend_mask: Option<Vec<f32>>,
}

impl ImageGroup {
    /// Prepares images `first..first + images`: samplers, seeds, starting latents.
    pub(super) async fn new(
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
    /// Runs the steps from `self.start` on all images of the group, one UNet call per step:
    /// on the device where the predictor keeps the latents there, else stepping the samplers
    /// here.
    pub(super) async fn denoise(
        &mut self,
        unet: &dyn NoisePredictor,
        mut on_stage: &mut dyn FnMut(Stage),
        on_step: &mut Option<StepObserver<'_>>,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        if !unet.keeps_latents() {
            return self.denoise_on_host(unet, on_stage, on_step, check).await;
        }
        let calls = self.start..self.samplers[0].timesteps().len();
        let blend = self.blend_mask.as_deref().map(|mask| Blend {
            image_latents: &self.image_latents,
            start_noise: &self.start_noise,
            mask,
        });
        unet.denoise_on_device(DenoiseLoop {
            samplers: &mut self.samplers,
            rngs: &mut self.rngs,
            latents: &mut self.latents,
            calls,
            shape: self.shape,
            guidance: self.cfg.then_some(self.guidance_scale),
            unet_extra: self.unet_extra.as_deref(),
            blend,
            // Through one more reference: the loop's trait objects live only as long as it.
            on_stage: &mut on_stage,
            on_step: on_step.as_mut().map(|f| f as &mut dyn FnMut(usize, &[f32])),
            check,
        })
        .await
    }

    /// The loop on the host: the UNet's prediction read back every step, guidance and the
    /// samplers' steps run here (the CPU backend's loop).
    async fn denoise_on_host(
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
