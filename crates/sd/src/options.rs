//! [`Options`]: everything about a generation but the prompt, as a builder.

use image::{DynamicImage, GrayImage, RgbImage};
use sd_core::params::{GenerationParams, ModelDefaults, ParamLimits, size_for_input_image};
use sd_core::sampler::SamplerKind;

use crate::error::{Error, Result};

/// How to generate: a builder whose every setting has a default. Nothing is checked until the
/// generation starts (or [`Options::validate`]); then a bad value is an
/// [`Error::InvalidOption`] naming it.
///
/// ```
/// use sd_wgsl::{Error, Options};
///
/// let options = Options::new()
///     .size(512, 768)
///     .steps(25)
///     .guidance_scale(7.0)
///     .negative_prompt("blurry")
///     .sampler("DPM++ 2M Karras") // or "dpm++2m_karras"
///     .seed(42)
///     .count(2);
/// options.validate()?;
///
/// let Err(Error::InvalidOption { option, message }) = Options::new().sampler("euler_b").validate()
/// else {
///     panic!("an unknown sampler is refused")
/// };
/// assert_eq!(option, "sampler");
/// assert!(message.contains("dpm++2m"), "the known samplers are listed: {message}");
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Options {
    negative_prompt: String,
    width: Option<u32>,
    height: Option<u32>,
    steps: Option<usize>,
    guidance_scale: Option<f32>,
    seed: Option<u64>,
    sampler: Option<String>,
    count: Option<u32>,
    init_image: Option<RgbImage>,
    strength: Option<f32>,
    mask: Option<GrayImage>,
    sample_init_latents: bool,
    initial_latents: Option<Vec<f32>>,
}

impl Options {
    /// The defaults: the model's native size (the input image's, with one), the model's steps,
    /// guidance and sampler ([`crate::Model::defaults`]: 20 steps, guidance 7.5, `euler_a`
    /// unless the model is distilled), no negative prompt, a random seed, one image, strength
    /// 0.8.
    pub fn new() -> Self {
        Self::default()
    }

    /// All settings of `params` (a request parsed elsewhere) but its prompt.
    pub fn from_params(params: &GenerationParams) -> Self {
        Self {
            negative_prompt: params.negative_prompt.clone(),
            width: Some(params.width),
            height: Some(params.height),
            steps: Some(params.steps),
            guidance_scale: Some(params.guidance_scale),
            seed: Some(params.seed),
            sampler: Some(params.sampler.name().to_string()),
            count: Some(params.count),
            strength: Some(params.strength),
            sample_init_latents: params.sample_init_latents,
            ..Self::default()
        }
    }

    /// Image width in pixels: a multiple of 8 from 64 to 2048.
    pub fn width(mut self, width: u32) -> Self {
        self.width = Some(width);
        self
    }

    /// Image height in pixels: a multiple of 8 from 64 to 2048.
    pub fn height(mut self, height: u32) -> Self {
        self.height = Some(height);
        self
    }

    /// Width and height.
    pub fn size(self, width: u32, height: u32) -> Self {
        self.width(width).height(height)
    }

    /// Denoising steps, 1 to 150 (default 20).
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps);
        self
    }

    /// Classifier-free guidance scale (default 7.5); at most 1 turns guidance off.
    pub fn guidance_scale(mut self, scale: f32) -> Self {
        self.guidance_scale = Some(scale);
        self
    }

    /// What to steer away from.
    pub fn negative_prompt(mut self, negative_prompt: impl Into<String>) -> Self {
        self.negative_prompt = negative_prompt.into();
        self
    }

    /// The noise seed; image `i` of a batch uses `seed + i` (default: a random seed, reported
    /// in [`crate::Images::seeds`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The sampler by name: `euler`, `euler_a` (default), `heun`, `dpm2`, `dpm2_a`,
    /// `dpm++2s_a`, `dpm++2m`, `dpm++2mv2` (each also `_karras`), `lcm`, `ddim`, `pndm`, or an
    /// A1111 name (`"DPM++ 2M Karras"`). An unknown name fails the generation with the list.
    pub fn sampler(mut self, name: impl Into<String>) -> Self {
        self.sampler = Some(name.into());
        self
    }

    /// The sampler as a [`SamplerKind`].
    pub fn sampler_kind(self, kind: SamplerKind) -> Self {
        self.sampler(kind.name())
    }

    /// Images to generate, 1 to 16 (default 1); they share UNet calls as far as the GPU's
    /// memory allows.
    pub fn count(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    /// img2img: start from this picture (any size; resized to the output size, which defaults
    /// to the picture's rounded down to a multiple of 8).
    pub fn init_image(mut self, image: impl Into<DynamicImage>) -> Self {
        self.init_image = Some(image.into().to_rgb8());
        self
    }

    /// img2img and inpainting: how much of the input image is repainted, from 0 (nothing: the
    /// input comes back through the VAE) to 1 (all; default 0.8).
    pub fn strength(mut self, strength: f32) -> Self {
        self.strength = Some(strength);
        self
    }

    /// Inpainting: white = repaint, black = keep (grey blends); needs [`Options::init_image`].
    pub fn mask(mut self, mask: impl Into<DynamicImage>) -> Self {
        self.mask = Some(mask.into().to_luma8());
        self
    }

    /// img2img: encode the input by a seeded sample of the VAE's distribution instead of its
    /// mean (the default, as diffusers' reference runs).
    pub fn sample_init_latents(mut self, sample: bool) -> Self {
        self.sample_init_latents = sample;
        self
    }

    /// Unit-noise starting latents, `count x 4 x height/8 x width/8` values, instead of the
    /// seeded noise (to reproduce another implementation's picture exactly).
    pub fn initial_latents(mut self, latents: Vec<f32>) -> Self {
        self.initial_latents = Some(latents);
        self
    }

    /// The input image, if any.
    pub fn input_image(&self) -> Option<&RgbImage> {
        self.init_image.as_ref()
    }

    /// The mask, if any.
    pub fn input_mask(&self) -> Option<&GrayImage> {
        self.mask.as_ref()
    }

    /// The starting latents, if given.
    pub fn input_latents(&self) -> Option<&[f32]> {
        self.initial_latents.as_deref()
    }

    /// Checks what can be checked without a model (at a 512x512 native size when no size is
    /// set and there is no input image).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the first bad option.
    pub fn validate(&self) -> Result<()> {
        // The length of given latents depends on the size, which may come from the model.
        self.params(
            "",
            &ModelDefaults::sized(512, 512),
            || 0,
            self.width.is_some() && self.height.is_some(),
        )
        .map(|_| ())
    }

    /// The parameters of a generation of `prompt` with these options, for a model with these
    /// defaults (see [`crate::Model::defaults`]); `random_seed` is asked when no seed is set.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the first bad option.
    pub fn to_params(
        &self,
        prompt: &str,
        model: &ModelDefaults,
        random_seed: impl FnOnce() -> u64,
    ) -> Result<GenerationParams> {
        self.params(prompt, model, random_seed, true)
    }

    fn params(
        &self,
        prompt: &str,
        model: &ModelDefaults,
        random_seed: impl FnOnce() -> u64,
        check_latents: bool,
    ) -> Result<GenerationParams> {
        let defaults = GenerationParams::default();
        let sampler = match &self.sampler {
            None => model.sampler,
            Some(name) => SamplerKind::parse(name).map_err(|e| Error::InvalidOption {
                option: "sampler",
                message: e.to_string(),
            })?,
        };
        if self.mask.is_some() && self.init_image.is_none() {
            return Err(Error::InvalidOption {
                option: "mask",
                message: "a mask needs an input image (init_image) to repaint".into(),
            });
        }
        let (native_w, native_h) = match &self.init_image {
            Some(image) => {
                size_for_input_image(image.width(), image.height(), &ParamLimits::default())
            }
            None => (model.width, model.height),
        };
        let params = GenerationParams {
            prompt: prompt.to_string(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps.unwrap_or(model.steps),
            guidance_scale: self.guidance_scale.unwrap_or(model.guidance_scale),
            seed: self.seed.unwrap_or_else(random_seed),
            sampler,
            width: self.width.unwrap_or(native_w),
            height: self.height.unwrap_or(native_h),
            count: self.count.unwrap_or(defaults.count),
            strength: self.strength.unwrap_or(defaults.strength),
            sample_init_latents: self.sample_init_latents,
            latents_len: self
                .initial_latents
                .as_ref()
                .filter(|_| check_latents)
                .map(Vec::len),
        };
        params.validate().map_err(|e| Error::InvalidOption {
            option: e.field.name(),
            message: e.message,
        })?;
        Ok(params)
    }
}

/// A seed from the clock, below 2^32 (so every client can show it exactly).
pub(crate) fn random_seed() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        (nanos as u64) % (1 << 32)
    }
    #[cfg(target_arch = "wasm32")]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_options_take_the_models_defaults() {
        let turbo = ModelDefaults::sized(512, 512).distilled(1, 0.0, SamplerKind::EULER);
        let p = Options::new().to_params("x", &turbo, || 9).expect("valid");
        assert_eq!(
            (p.steps, p.guidance_scale, p.sampler),
            (1, 0.0, SamplerKind::EULER)
        );
        let p = Options::new()
            .steps(4)
            .guidance_scale(2.0)
            .sampler("ddim")
            .to_params("x", &turbo, || 9)
            .expect("valid");
        assert_eq!(
            (p.steps, p.guidance_scale, p.sampler),
            (4, 2.0, SamplerKind::DDIM)
        );
    }

    #[test]
    fn defaults_and_input_image_size() {
        let p = Options::new()
            .to_params("x", &ModelDefaults::sized(64, 64), || 9)
            .expect("defaults are valid");
        assert_eq!((p.width, p.height, p.steps, p.seed), (64, 64, 20, 9));
        let image = RgbImage::new(100, 77);
        let p = Options::new()
            .init_image(image)
            .to_params("x", &ModelDefaults::sized(64, 64), || 9)
            .expect("valid");
        assert_eq!(
            (p.width, p.height),
            (96, 72),
            "the image's size, rounded down to 8"
        );
    }

    #[test]
    fn each_bad_option_is_named() {
        for (options, option) in [
            (Options::new().width(30), "width"),
            (Options::new().steps(0), "steps"),
            (Options::new().sampler("Euler b"), "sampler"),
            (Options::new().strength(1.5), "strength"),
            (Options::new().count(0), "count"),
            (Options::new().guidance_scale(f32::NAN), "guidance_scale"),
            (Options::new().mask(GrayImage::new(8, 8)), "mask"),
            (
                Options::new().size(64, 64).initial_latents(vec![0.0; 3]),
                "latents",
            ),
        ] {
            match options.validate() {
                Err(Error::InvalidOption { option: o, .. }) => assert_eq!(o, option),
                other => panic!("{option}: {other:?}"),
            }
        }
    }
}
