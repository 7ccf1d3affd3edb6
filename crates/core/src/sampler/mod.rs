//! The samplers (diffusers' "schedulers"): given the UNet's output at a step, the next latents.
//!
//! One file per sampler, each mirroring one diffusers 0.42 class:
//!
//! | name | file | diffusers class |
//! | --- | --- | --- |
//! | `euler`, `euler_karras` | [`euler`] | `EulerDiscreteScheduler` (`use_karras_sigmas`) |
//! | `euler_a` | [`euler_ancestral`] | `EulerAncestralDiscreteScheduler` |
//! | `ddim` | [`ddim`] | `DDIMScheduler` (with `eta`) |
//! | `dpmpp_2m`, `dpmpp_2m_karras` | [`dpmpp_2m`] | `DPMSolverMultistepScheduler` (`dpmsolver++`, order 2, midpoint) |
//!
//! [`SamplerKind::build`] makes one from a checkpoint's `scheduler_config.json` the way
//! diffusers' `from_config` does: the keys the class knows are taken over (for SD 1.x that
//! includes `timestep_spacing: leading` and `steps_offset: 1` of its PNDM config), missing ones
//! get that class's default (`linspace` spacing for Euler and DPM-Solver, `leading` for DDIM).
//! Keys our [`SchedulerConfig`] does not parse (`interpolation_type`, `final_sigmas_type`,
//! `timestep_type`, `thresholding`, `solver_order`, ...) are at diffusers' defaults.
//!
//! The schedule itself (timesteps and sigmas) is float64 holding diffusers' float32 values;
//! the per-element update runs in `f32`, operation by operation in diffusers' order, so a step
//! reproduces torch's float32 result.
//!
//! A denoising loop, as diffusers' `StableDiffusionPipeline` runs it:
//!
//! ```
//! use sd_core::config::SchedulerConfig;
//! use sd_core::rng::NoiseRng;
//! use sd_core::sampler::SamplerKind;
//!
//! let config = SchedulerConfig::from_json("scheduler_config.json", r#"{
//!     "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
//!     "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
//!     "timestep_spacing": "leading"}"#)?;
//! let mut sampler = SamplerKind::EulerAncestral.build(&config, 20)?;
//! let mut rng = NoiseRng::new(42);
//! let sigma = sampler.init_noise_sigma() as f32;
//! let mut latents: Vec<f32> = rng.normals(4 * 8 * 8).iter().map(|x| x * sigma).collect();
//! for step in 0..sampler.timesteps().len() {
//!     let mut input = latents.clone();
//!     sampler.scale_model_input(&mut input, step)?;
//!     let t = sampler.timesteps()[step];
//!     let noise_pred = vec![0.0; input.len()]; // unet(input, t, text), after CFG
//!     latents = sampler.step(&noise_pred, step, &latents, &mut |n| rng.normals(n))?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use crate::config::{PredictionType, SchedulerConfig};
use crate::schedule::{self, ScheduleError};

pub mod ddim;
pub mod dpmpp_2m;
pub mod euler;
pub mod euler_ancestral;

pub use ddim::Ddim;
pub use dpmpp_2m::DpmSolverMultistep;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestral;

/// What went wrong building or stepping a sampler.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    /// A sampler name that is not one of [`SamplerKind::ALL`].
    #[error("unknown sampler `{name}`; known samplers: {known}")]
    UnknownSampler {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The schedule cannot be built (step count, betas).
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The config's `prediction_type` is one this sampler does not implement (as in diffusers).
    #[error("sampler `{sampler}` does not support prediction_type `{prediction}`")]
    UnsupportedPrediction {
        /// The sampler's name.
        sampler: &'static str,
        /// The prediction type.
        prediction: &'static str,
    },
    /// A step index past the schedule.
    #[error("step {step} is out of range: the schedule has {steps} steps")]
    StepOutOfRange {
        /// The step index given.
        step: usize,
        /// The number of steps.
        steps: usize,
    },
    /// A multistep sampler was stepped out of order.
    #[error(
        "sampler `{sampler}` keeps the previous steps' outputs: step {step} was called, but the next step is {expected}"
    )]
    OutOfOrder {
        /// The sampler's name.
        sampler: &'static str,
        /// The step index given.
        step: usize,
        /// The step that must come next.
        expected: usize,
    },
    /// An input, or a noise draw, of the wrong length.
    #[error("`{what}` has {found} values, expected {expected}")]
    Length {
        /// Which input: `model_output`, `noise`, ...
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A spaced timestep outside the training timesteps (a large `steps_offset`).
    #[error(
        "timestep {timestep} is outside the {num_train_timesteps} training timesteps (steps_offset too large?)"
    )]
    TimestepOutOfRange {
        /// The timestep.
        timestep: f64,
        /// `num_train_timesteps`.
        num_train_timesteps: usize,
    },
    /// DDIM's `eta` is not a finite number >= 0.
    #[error("eta must be a finite number >= 0, got {0}")]
    BadEta(f64),
}

/// A sampler, by the name users pick it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SamplerKind {
    /// `euler`: Euler (`EulerDiscreteScheduler`).
    Euler,
    /// `euler_karras`: Euler on Karras sigmas.
    EulerKarras,
    /// `euler_a`: Euler ancestral (`EulerAncestralDiscreteScheduler`); the default.
    #[default]
    EulerAncestral,
    /// `ddim`: DDIM (`DDIMScheduler`), deterministic unless `eta > 0`.
    Ddim,
    /// `dpmpp_2m`: DPM-Solver++ 2M (`DPMSolverMultistepScheduler`).
    DpmPP2M,
    /// `dpmpp_2m_karras`: DPM-Solver++ 2M on Karras sigmas.
    DpmPP2MKarras,
}

/// Options that only some samplers read.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SamplerOptions {
    /// DDIM's `eta`: 0 is deterministic DDIM (the pipelines' default), 1 DDPM-like; the other
    /// samplers ignore it.
    pub eta: f64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self { eta: 0.0 }
    }
}

impl SamplerOptions {
    /// The options with DDIM's `eta` set.
    pub fn with_eta(eta: f64) -> Self {
        Self { eta }
    }
}

impl SamplerKind {
    /// Every sampler, in the order names are listed.
    pub const ALL: [SamplerKind; 6] = [
        Self::Euler,
        Self::EulerKarras,
        Self::EulerAncestral,
        Self::Ddim,
        Self::DpmPP2M,
        Self::DpmPP2MKarras,
    ];

    /// The name (`euler`, `euler_karras`, `euler_a`, `ddim`, `dpmpp_2m`, `dpmpp_2m_karras`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::EulerKarras => "euler_karras",
            Self::EulerAncestral => "euler_a",
            Self::Ddim => "ddim",
            Self::DpmPP2M => "dpmpp_2m",
            Self::DpmPP2MKarras => "dpmpp_2m_karras",
        }
    }

    /// The sampler called `name` (exactly one of the [`SamplerKind::name`]s).
    ///
    /// # Errors
    ///
    /// [`SamplerError::UnknownSampler`], listing the known names.
    pub fn parse(name: &str) -> Result<Self, SamplerError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| SamplerError::UnknownSampler {
                name: name.into(),
                known: Self::ALL.map(Self::name).join(", "),
            })
    }

    /// Whether this name asks for Karras sigmas.
    pub fn is_karras(self) -> bool {
        matches!(self, Self::EulerKarras | Self::DpmPP2MKarras)
    }

    /// Builds the sampler for `steps` inference steps from a checkpoint's scheduler config,
    /// with default [`SamplerOptions`] (DDIM `eta` 0).
    ///
    /// `use_karras_sigmas: true` in the config turns on Karras sigmas for `euler` and
    /// `dpmpp_2m` too, as diffusers' `from_config` carries the key over.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`] for a step count or betas the schedule cannot use,
    /// [`SamplerError::UnsupportedPrediction`] (Euler ancestral with `sample`) and
    /// [`SamplerError::TimestepOutOfRange`].
    pub fn build(
        self,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Sampler>, SamplerError> {
        self.build_with(config, steps, &SamplerOptions::default())
    }

    /// [`SamplerKind::build`] with options.
    ///
    /// # Errors
    ///
    /// As [`SamplerKind::build`], and [`SamplerError::BadEta`].
    pub fn build_with(
        self,
        config: &SchedulerConfig,
        steps: usize,
        options: &SamplerOptions,
    ) -> Result<Box<dyn Sampler>, SamplerError> {
        let karras = self.is_karras() || config.use_karras_sigmas == Some(true);
        Ok(match self {
            Self::Euler | Self::EulerKarras => Box::new(EulerDiscrete::new(config, steps, karras)?),
            Self::EulerAncestral => Box::new(EulerAncestral::new(config, steps)?),
            Self::Ddim => Box::new(Ddim::new(config, steps, options.eta)?),
            Self::DpmPP2M | Self::DpmPP2MKarras => {
                Box::new(DpmSolverMultistep::new(config, steps, karras)?)
            }
        })
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SamplerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name)
    }
}

/// A sampler with its schedule set for a number of steps. Steps are indices into
/// [`Sampler::timesteps`], `0..steps`.
pub trait Sampler: fmt::Debug + Send {
    /// Which sampler this is (with Karras sigmas when the config turned them on).
    fn kind(&self) -> SamplerKind;

    /// The timestep the UNet is given at each step (diffusers' `scheduler.timesteps`; whole
    /// numbers except for Euler's Karras and `linspace` schedules, which are float32 values).
    fn timesteps(&self) -> &[f64];

    /// The noise level of each step plus a final 0 (`scheduler.sigmas`, float32 values), for
    /// the samplers that have sigmas; `None` for DDIM.
    fn sigmas(&self) -> Option<&[f64]>;

    /// The standard deviation of the starting noise: the pipeline multiplies unit normal
    /// latents by it (`scheduler.init_noise_sigma`).
    fn init_noise_sigma(&self) -> f64;

    /// What [`Sampler::scale_model_input`] divides the latents by at `step` before they go into
    /// the UNet: `(sigma ** 2 + 1) ** 0.5` for the Euler samplers, 1 for the others. For
    /// executors that scale on the GPU: divide (do not multiply by the inverse) to match.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`].
    fn model_input_divisor(&self, step: usize) -> Result<f32, SamplerError>;

    /// Scales the latents for the UNet in place (`scheduler.scale_model_input`). The latents
    /// that [`Sampler::step`] takes are the unscaled ones.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`].
    fn scale_model_input(&self, sample: &mut [f32], step: usize) -> Result<(), SamplerError> {
        let divisor = self.model_input_divisor(step)?;
        if divisor != 1.0 {
            for x in sample {
                *x /= divisor;
            }
        }
        Ok(())
    }

    /// One denoising step (`scheduler.step(...).prev_sample`): the latents after `step` from the
    /// (unscaled) latents `sample` and the UNet's `model_output` at that step (after
    /// classifier-free guidance). `noise(n)` must return `n` standard normal values; it is
    /// called only by stochastic samplers, once per step, where diffusers draws.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`], [`SamplerError::Length`] (inputs or noise of the wrong
    /// length) and [`SamplerError::OutOfOrder`] (DPM-Solver++, which remembers the previous
    /// step, must see consecutive steps; its first step may be any).
    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError>;

    /// Noises clean latents to the noise level of `step` with the sampler's own rule
    /// (`scheduler.add_noise`, for img2img and inpainting): `x + sigma * noise` for Euler,
    /// `sqrt(acp) * x + sqrt(1 - acp) * noise` for DDIM, `alpha * x + sigma_t * noise` for
    /// DPM-Solver.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`] and [`SamplerError::Length`].
    fn add_noise(
        &self,
        original: &[f32],
        noise: &[f32],
        step: usize,
    ) -> Result<Vec<f32>, SamplerError>;
}

/// The `alphas_cumprod` that the sigma-based samplers use: [`schedule::alphas_cumprod`], with
/// the last set to [`schedule::betas::ZERO_SNR_LAST_ALPHA_CUMPROD`] under
/// `rescale_betas_zero_snr` (as Euler, Euler ancestral and DPM-Solver do).
fn sigma_alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f64>, SamplerError> {
    let mut acp = schedule::alphas_cumprod(config)?;
    if config.rescale_betas_zero_snr == Some(true)
        && let Some(last) = acp.last_mut()
    {
        *last = schedule::betas::ZERO_SNR_LAST_ALPHA_CUMPROD;
    }
    Ok(acp)
}

fn check_step(step: usize, steps: usize) -> Result<(), SamplerError> {
    if step < steps {
        Ok(())
    } else {
        Err(SamplerError::StepOutOfRange { step, steps })
    }
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), SamplerError> {
    if expected == found {
        Ok(())
    } else {
        Err(SamplerError::Length {
            what,
            expected,
            found,
        })
    }
}

/// Draws `n` normals from the caller's noise source and checks the count.
fn draw_noise(
    noise: &mut dyn FnMut(usize) -> Vec<f32>,
    n: usize,
) -> Result<Vec<f32>, SamplerError> {
    let values = noise(n);
    check_len("noise", n, values.len())?;
    Ok(values)
}

fn prediction_name(prediction: PredictionType) -> &'static str {
    match prediction {
        PredictionType::Epsilon => "epsilon",
        PredictionType::VPrediction => "v_prediction",
        PredictionType::Sample => "sample",
    }
}

/// `(sigma ** 2 + 1) ** 0.5` in float32 (the Euler input scale; DPM-Solver's `1 / alpha_t`).
fn sqrt_sigma_sq_plus_one(sigma: f32) -> f32 {
    libm::sqrtf(sigma * sigma + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn names_round_trip() {
        for kind in SamplerKind::ALL {
            assert_eq!(SamplerKind::parse(kind.name()), Ok(kind));
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!(SamplerKind::default(), SamplerKind::EulerAncestral);
    }
}
