//! The parameters of a generation request, shared by the CLI, the browser and the HTTP API,
//! and their validation.
//!
//! The defaults and the CFG rule follow diffusers' `StableDiffusionPipeline.__call__`
//! (`diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py`): classifier-free
//! guidance runs only when `guidance_scale > 1`, and height and width must be multiples of 8
//! (the VAE's downsampling factor).

use alloc::string::String;
use core::fmt;

use crate::sampler::SamplerKind;

/// Latent channels of the SD VAE (the latents are `4 x height/8 x width/8` per image).
pub const LATENT_CHANNELS: usize = 4;

/// The VAE's downsampling factor: latents are 1/8 of the image size.
pub const VAE_SCALE: u32 = 8;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// The prompt (may be empty: an unconditional picture).
    pub prompt: String,
    /// The negative prompt, the unconditional half of classifier-free guidance ("" when none).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 means no unconditional pass.
    pub guidance_scale: f32,
    /// The noise seed.
    pub seed: u64,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Images to generate.
    pub count: u32,
    /// img2img and inpainting: how much of the input image is repainted, in [0, 1]. The
    /// sampler skips the first `steps * (1 - strength)` steps and starts from the input's
    /// latents noised to the level of the step it starts at (diffusers' `strength`): 0 returns
    /// the input through the VAE, 1 starts from pure noise. Ignored without an input image.
    pub strength: f32,
    /// img2img and inpainting: encode the input image by a sample of the VAE's latent
    /// distribution drawn from the seed instead of its mean (the default, as diffusers'
    /// reference runs).
    pub sample_init_latents: bool,
    /// The length of caller-supplied starting latents, when the caller gives them instead of
    /// drawing noise from the seed.
    pub latents_len: Option<usize>,
}

/// What a request gets for the settings it leaves out, for one model: its native size and the
/// steps, guidance and sampler it is meant to run with. Distilled models differ from the
/// usual 20 steps at guidance 7.5: SD-Turbo and SDXL-Turbo take 1 step without guidance, LCM
/// models 4 LCM steps with the guidance scale as an embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelDefaults {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance_scale: f32,
    /// Sampler.
    pub sampler: SamplerKind,
}

impl ModelDefaults {
    /// The usual settings ([`GenerationParams::default`]'s steps, guidance and sampler) at
    /// `width` x `height`.
    pub fn sized(width: u32, height: u32) -> Self {
        let d = GenerationParams::default();
        Self {
            width,
            height,
            steps: d.steps,
            guidance_scale: d.guidance_scale,
            sampler: d.sampler,
        }
    }

    /// The same size with a distilled model's steps, guidance and sampler.
    pub fn distilled(self, steps: usize, guidance_scale: f32, sampler: SamplerKind) -> Self {
        Self {
            steps,
            guidance_scale,
            sampler,
            ..self
        }
    }
}

impl Default for GenerationParams {
    /// SD 1.5's usual request: 512x512, 20 steps, guidance 7.5, `euler_a`, one image, seed 0,
    /// strength 0.8 (diffusers' img2img default).
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            guidance_scale: 7.5,
            seed: 0,
            sampler: SamplerKind::default(),
            width: 512,
            height: 512,
            count: 1,
            strength: 0.8,
            sample_init_latents: false,
            latents_len: None,
        }
    }
}

/// The bounds [`GenerationParams::validate_with`] checks against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamLimits {
    /// The smallest width and height (default 64).
    pub min_size: u32,
    /// The largest width and height (default 2048; a browser may want less).
    pub max_size: u32,
    /// The most steps (default 150; LCM and turbo models use 1 to 8).
    pub max_steps: usize,
    /// The most images per request (default 16).
    pub max_count: u32,
}

impl Default for ParamLimits {
    fn default() -> Self {
        Self {
            min_size: 64,
            max_size: 2048,
            max_steps: 150,
            max_count: 16,
        }
    }
}

/// A parameter of [`GenerationParams`], as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamField {
    /// `width`.
    Width,
    /// `height`.
    Height,
    /// `steps`.
    Steps,
    /// `guidance_scale`.
    GuidanceScale,
    /// `count`.
    Count,
    /// `strength`.
    Strength,
    /// `latents` (their length).
    Latents,
}

impl ParamField {
    /// The field's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Width => "width",
            Self::Height => "height",
            Self::Steps => "steps",
            Self::GuidanceScale => "guidance_scale",
            Self::Count => "count",
            Self::Strength => "strength",
            Self::Latents => "latents",
        }
    }
}

impl fmt::Display for ParamField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parameter outside what is allowed: which one, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct ParamsError {
    /// The parameter.
    pub field: ParamField,
    /// Its value and what is allowed.
    pub message: String,
}

impl GenerationParams {
    /// Checks the parameters against the default [`ParamLimits`].
    ///
    /// # Errors
    ///
    /// As [`GenerationParams::validate_with`].
    pub fn validate(&self) -> Result<(), ParamsError> {
        self.validate_with(&ParamLimits::default())
    }

    /// Checks the parameters: width and height multiples of 8 within
    /// `min_size..=max_size`, steps in `1..=max_steps`, a finite guidance scale >= 0, count
    /// in `1..=max_count`, strength in [0, 1], and starting latents, if given, of [`Self::latents_len_needed`]
    /// values. Prompts may be empty.
    ///
    /// # Errors
    ///
    /// The first [`ParamsError`] found, naming the field.
    pub fn validate_with(&self, limits: &ParamLimits) -> Result<(), ParamsError> {
        for (field, value) in [
            (ParamField::Width, self.width),
            (ParamField::Height, self.height),
        ] {
            if value % VAE_SCALE != 0 || value < limits.min_size || value > limits.max_size {
                return Err(error(
                    field,
                    alloc::format!(
                        "{value} is not allowed: a multiple of {VAE_SCALE} from {} to {}",
                        limits.min_size,
                        limits.max_size
                    ),
                ));
            }
        }
        if self.steps == 0 || self.steps > limits.max_steps {
            return Err(error(
                ParamField::Steps,
                alloc::format!(
                    "{} is not allowed: from 1 to {}",
                    self.steps,
                    limits.max_steps
                ),
            ));
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return Err(error(
                ParamField::GuidanceScale,
                alloc::format!(
                    "{} is not allowed: a finite number >= 0 (at most 1 turns guidance off)",
                    self.guidance_scale
                ),
            ));
        }
        if self.count == 0 || self.count > limits.max_count {
            return Err(error(
                ParamField::Count,
                alloc::format!(
                    "{} is not allowed: from 1 to {}",
                    self.count,
                    limits.max_count
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.strength) {
            return Err(error(
                ParamField::Strength,
                alloc::format!("{} is not allowed: a number from 0 to 1", self.strength),
            ));
        }
        if let Some(found) = self.latents_len {
            let needed = self.latents_len_needed();
            if found != needed {
                return Err(error(
                    ParamField::Latents,
                    alloc::format!(
                        "{found} values given, {needed} needed ({LATENT_CHANNELS} x {} x {} per image, {} images)",
                        self.height / VAE_SCALE,
                        self.width / VAE_SCALE,
                        self.count
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The number of latent values for all images: `4 * (height / 8) * (width / 8) * count`.
    pub fn latents_len_needed(&self) -> usize {
        LATENT_CHANNELS
            * (self.height / VAE_SCALE) as usize
            * (self.width / VAE_SCALE) as usize
            * self.count as usize
    }

    /// Whether classifier-free guidance runs (an unconditional pass per step): `guidance_scale
    /// > 1`, as in diffusers.
    pub fn uses_cfg(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// The size to generate at from an input image of `width` x `height` when the request gives
/// none (as diffusers' image processor): each side rounded down to a multiple of 8 and kept
/// within `limits`.
pub fn size_for_input_image(width: u32, height: u32, limits: &ParamLimits) -> (u32, u32) {
    let fit = |side: u32| (side - side % VAE_SCALE).clamp(limits.min_size, limits.max_size);
    (fit(width), fit(height))
}

fn error(field: ParamField, message: String) -> ParamsError {
    ParamsError { field, message }
}
