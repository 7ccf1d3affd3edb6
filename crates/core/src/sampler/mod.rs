//! The samplers (diffusers' "schedulers"): given the UNet's output at a step, the next latents.
//!
//! One file per sampler, each mirroring one diffusers 0.42 class or, where diffusers has none,
//! one k-diffusion / AUTOMATIC1111 sampling function on the schedule of diffusers' Euler:
//!
//! | name | file | follows |
//! | --- | --- | --- |
//! | `euler`, `euler_karras` | [`euler`] | `EulerDiscreteScheduler` (`use_karras_sigmas`) |
//! | `euler_a`, `euler_a_karras` | [`euler_ancestral`] | `EulerAncestralDiscreteScheduler` (Karras: Euler's Karras schedule) |
//! | `heun`, `heun_karras` | [`heun`] | `HeunDiscreteScheduler` |
//! | `dpm2`, `dpm2_karras` | [`dpm2`] | `KDPM2DiscreteScheduler` |
//! | `dpm2_a`, `dpm2_a_karras` | [`dpm2_ancestral`] | `KDPM2AncestralDiscreteScheduler` |
//! | `dpm++2s_a`, `dpm++2s_a_karras` | [`dpmpp_2s_ancestral`] | k-diffusion `sample_dpmpp_2s_ancestral` on Euler's schedule |
//! | `dpm++2m`, `dpm++2m_karras` | [`dpmpp_2m`] | `DPMSolverMultistepScheduler` (`dpmsolver++`, order 2, midpoint) |
//! | `dpm++2mv2`, `dpm++2mv2_karras` | [`dpmpp_2m_v2`] | AUTOMATIC1111 discussion 8457's `sample_dpmpp_2m_v2` on Euler's schedule |
//! | `lcm` | [`lcm`] | `LCMScheduler` |
//! | `ddim` | [`ddim`] | `DDIMScheduler` (with `eta`) |
//! | `pndm` | [`pndm`] | `PNDMScheduler` (`skip_prk_steps`: PLMS) |
//!
//! **Model calls.** A sampler that calls the model twice per step (Heun, DPM2, DPM2 ancestral,
//! DPM++ 2S ancestral: [`Sampler::order`] 2) does it the diffusers way: [`Sampler::timesteps`]
//! lists every model call (`2 * steps - 1` of them: the last step, to sigma 0, is a single
//! Euler step) and [`Sampler::step`] is called once per model call, keeping the first call's
//! state until the second. PNDM with `skip_prk_steps` lists `steps + 1` calls.
//!
//! [`SamplerKind::build`] makes one from a checkpoint's `scheduler_config.json` the way
//! diffusers' `from_config` does: the keys the class knows are taken over (for SD 1.x that
//! includes `timestep_spacing: leading` and `steps_offset: 1` of its PNDM config), missing ones
//! get that class's default (`linspace` spacing for Euler, Heun, DPM2 and DPM-Solver, and for
//! DPM++ 2S ancestral and DPM++ 2M v2, which take Euler's schedule; `leading` for DDIM and
//! PNDM; LCM has its own). Keys a class does not have are ignored as `from_config` ignores them
//! (`rescale_betas_zero_snr` for Heun, DPM2 and PNDM; `use_karras_sigmas` for Euler
//! ancestral). Keys our [`SchedulerConfig`] does not parse (`interpolation_type`, `final_sigmas_type`,
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
//! let mut sampler = SamplerKind::EULER_A.build(&config, 20)?;
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

use crate::config::{PredictionType, SchedulerConfig};
use crate::schedule::{self, ScheduleError};

mod common;
pub mod ddim;
pub mod dpm2;
pub mod dpm2_ancestral;
pub mod dpmpp_2m;
pub mod dpmpp_2m_v2;
pub mod dpmpp_2s_ancestral;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
mod kind;
pub mod lcm;
pub mod pndm;
pub mod program;

pub use common::Schedule;
pub use ddim::Ddim;
pub use dpm2::KDpm2;
pub use dpm2_ancestral::KDpm2Ancestral;
pub use dpmpp_2m::DpmSolverMultistep;
pub use dpmpp_2m_v2::DpmPP2MV2;
pub use dpmpp_2s_ancestral::DpmPP2SAncestral;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestral;
pub use heun::HeunDiscrete;
pub use kind::{Algorithm, SamplerKind};
pub use lcm::Lcm;
pub use pndm::Pndm;
pub use program::{Bytecode, Expr, HostInputs, StepProgram};

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
    /// A sampler's step does not fit the step interpreter's limits (a bug in a sampler, not in
    /// an input).
    #[error("a step program has too many {0}")]
    ProgramTooLarge(&'static str),
    /// DDIM's `eta` is not a finite number >= 0.
    #[error("eta must be a finite number >= 0, got {0}")]
    BadEta(f64),
    /// Karras sigmas asked for with a sampler that has no sigmas (LCM, DDIM, PNDM).
    #[error("sampler `{sampler}` steps between training timesteps and has no Karras variant")]
    KarrasUnsupported {
        /// The algorithm's name.
        sampler: &'static str,
    },
    /// LCM's step count does not fit its `original_inference_steps` (diffusers refuses it the
    /// same way): at most `original_inference_steps` steps, which must be 1 to
    /// `num_train_timesteps`.
    #[error(
        "lcm takes 1 to {original_inference_steps} steps (its original_inference_steps, at most {num_train_timesteps}), got {steps}"
    )]
    LcmSteps {
        /// The steps asked for.
        steps: usize,
        /// The config's `original_inference_steps` (default 50).
        original_inference_steps: usize,
        /// The config's `num_train_timesteps`.
        num_train_timesteps: usize,
    },
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
    /// Builds the sampler for `steps` inference steps from a checkpoint's scheduler config,
    /// with default [`SamplerOptions`] (DDIM `eta` 0).
    ///
    /// `use_karras_sigmas: true` in the config turns on Karras sigmas where the diffusers
    /// class reads that key (Euler, Heun, DPM2, DPM2 ancestral, DPM-Solver++) and for the
    /// samplers on Euler's schedule (DPM++ 2S ancestral, DPM++ 2M v2); not for Euler
    /// ancestral (whose diffusers class has no such key).
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`] for a step count or betas the schedule cannot use,
    /// [`SamplerError::UnsupportedPrediction`] (`sample` prediction with Euler ancestral,
    /// DPM2, DPM2 ancestral, DPM++ 2S ancestral and PNDM), [`SamplerError::TimestepOutOfRange`],
    /// [`SamplerError::KarrasUnsupported`] for a hand-made Karras LCM, DDIM or PNDM and
    /// [`SamplerError::LcmSteps`].
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
        if !self.is_valid() {
            return Err(SamplerError::KarrasUnsupported {
                sampler: self.algorithm.name(),
            });
        }
        let karras = self.karras || config.use_karras_sigmas == Some(true);
        Ok(match self.algorithm {
            Algorithm::Euler => Box::new(EulerDiscrete::new(config, steps, karras)?),
            Algorithm::EulerAncestral => Box::new(EulerAncestral::new(config, steps, self.karras)?),
            Algorithm::Heun => Box::new(HeunDiscrete::new(config, steps, karras)?),
            Algorithm::Dpm2 => Box::new(KDpm2::new(config, steps, karras)?),
            Algorithm::Dpm2Ancestral => Box::new(KDpm2Ancestral::new(config, steps, karras)?),
            Algorithm::DpmPP2SAncestral => Box::new(DpmPP2SAncestral::new(config, steps, karras)?),
            Algorithm::DpmPP2M => Box::new(DpmSolverMultistep::new(config, steps, karras)?),
            Algorithm::DpmPP2MV2 => Box::new(DpmPP2MV2::new(config, steps, karras)?),
            Algorithm::Lcm => Box::new(Lcm::new(config, steps)?),
            Algorithm::Ddim => Box::new(Ddim::new(config, steps, options.eta)?),
            Algorithm::Pndm => Box::new(Pndm::new(config, steps)?),
        })
    }
}

/// A sampler with its schedule set for a number of steps. Steps are indices into
/// [`Sampler::timesteps`], one per model call: `0..steps` for one call per step,
/// `0..2 * steps - 1` for the two-call samplers ([`Sampler::order`] 2), `0..steps + 1` for
/// PNDM.
pub trait Sampler: fmt::Debug + Send {
    /// The sampler's [`Schedule`], which the accessors below read.
    fn schedule(&self) -> &Schedule;

    /// Which sampler this is (with Karras sigmas when the config turned them on).
    fn kind(&self) -> SamplerKind {
        self.schedule().kind
    }

    /// Model calls per step (diffusers' `scheduler.order`): 2 for samplers whose
    /// [`Sampler::timesteps`] list two calls per step; img2img starts at `t_start * order`.
    fn order(&self) -> usize {
        self.kind().order()
    }

    /// The timestep the UNet is given at each model call (diffusers' `scheduler.timesteps`;
    /// whole numbers except for the `linspace` and Karras schedules of the samplers on Euler's
    /// schedule (Euler, Euler ancestral, Heun, DPM++ 2S ancestral, DPM++ 2M v2) and the
    /// midpoint calls of DPM2, DPM2 ancestral and DPM++ 2S ancestral, which are fractional).
    fn timesteps(&self) -> &[f64] {
        &self.schedule().timesteps
    }

    /// The noise levels (float32 values), for the samplers that have sigmas; `None` for LCM,
    /// DDIM and PNDM. Where diffusers has the class, its `scheduler.sigmas`: one per step plus
    /// a final 0 for one-call samplers; for Heun `[s0, s1, s1, ..., s(n-1), s(n-1), 0]` (the
    /// sigma of each model call, then 0); for DPM2 and DPM2 ancestral the same with `0, 0, 0`
    /// at the end (`2 * steps + 2` values; their midpoint calls run at interpolated sigmas
    /// that are not listed). For DPM++ 2S ancestral: the sigma of each model call, then 0.
    /// `add_noise(.., step)` noises to `sigmas[step]` in every case.
    fn sigmas(&self) -> Option<&[f64]> {
        self.schedule().sigmas()
    }

    /// The standard deviation of the starting noise: the pipeline multiplies unit normal
    /// latents by it (`scheduler.init_noise_sigma`).
    fn init_noise_sigma(&self) -> f64 {
        self.schedule().init_noise_sigma
    }

    /// What [`Sampler::scale_model_input`] divides the latents by at `step` before they go into
    /// the UNet: `(sigma ** 2 + 1) ** 0.5` of the call's sigma for the sigma-based samplers
    /// except DPM-Solver++ 2M, 1 for DPM-Solver++ 2M, LCM, DDIM and PNDM. For
    /// executors that scale on the GPU: divide (do not multiply by the inverse) to match.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`].
    fn model_input_divisor(&self, step: usize) -> Result<f32, SamplerError> {
        self.schedule().model_input_divisor(step)
    }

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

    /// The program of model call `step` ([`program`]): what [`Sampler::step`] computes per
    /// element, for an executor that keeps the latents elsewhere (the GPU). It advances the
    /// sampler's own bookkeeping as a step does (which call comes next, what is kept), so each
    /// call's program is asked for once, in order; the executor keeps the buffers the program
    /// says to keep and passes them back as [`program::Input::Kept`]. Errors as
    /// [`Sampler::step`]'s order and range errors.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`], [`SamplerError::OutOfOrder`].
    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError>;

    /// The buffers [`Sampler::step`] keeps between calls on the host.
    fn host_kept(&mut self) -> &mut Vec<Vec<f32>>;

    /// One denoising step (`scheduler.step(...).prev_sample`): the latents after `step` from the
    /// (unscaled) latents `sample` and the UNet's `model_output` at that step (after
    /// classifier-free guidance). For a two-call sampler, the first call of a step returns
    /// the latents the second call's model input is made from (at the midpoint sigma), the
    /// second call the latents of the next step. `noise(n)` must return `n` standard normal
    /// values; it is called only by stochastic samplers, at most once per call, where
    /// diffusers (or k-diffusion) draws.
    ///
    /// It runs [`Sampler::program`] on the host.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`], [`SamplerError::Length`] (inputs or noise of the wrong
    /// length) and [`SamplerError::OutOfOrder`]: the multistep samplers (DPM-Solver++ 2M,
    /// DPM++ 2M v2, PNDM) remember the previous steps and must see consecutive steps, their
    /// first step may be any; a two-call sampler's second call must follow its first.
    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError> {
        self.schedule()
            .check_step_inputs(step, sample, model_output)?;
        // What earlier calls kept must fit before this call's bookkeeping advances.
        if let Some(kept) = self.host_kept().iter().find(|k| k.len() != sample.len()) {
            return Err(SamplerError::Length {
                what: "model_output",
                expected: kept.len(),
                found: sample.len(),
            });
        }
        let code = self.program(step)?.compile()?;
        let noise = match code.reads(program::Input::Noise) {
            true => draw_noise(noise, sample.len())?,
            false => Vec::new(),
        };
        let inputs = HostInputs {
            sample,
            output: model_output,
            noise: &noise,
            ..HostInputs::default()
        };
        code.run(&inputs, self.host_kept())
    }

    /// Noises clean latents to the noise level of `step` with the sampler's own rule
    /// (`scheduler.add_noise`, for img2img and inpainting): `x + sigma * noise` for the
    /// sigma-based samplers (`sigma = sigmas[step]`), `sqrt(acp) * x + sqrt(1 - acp) * noise`
    /// for LCM, DDIM and PNDM, `alpha * x + sigma_t * noise` for DPM-Solver++ 2M.
    ///
    /// # Errors
    ///
    /// [`SamplerError::StepOutOfRange`] and [`SamplerError::Length`].
    fn add_noise(
        &self,
        original: &[f32],
        noise: &[f32],
        step: usize,
    ) -> Result<Vec<f32>, SamplerError> {
        self.schedule().add_noise(original, noise, step)
    }
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

/// [`SamplerError::UnsupportedPrediction`] for `sample` prediction, which the k-diffusion
/// ports of diffusers (Euler ancestral, DPM2, DPM2 ancestral) and PNDM do not implement.
fn refuse_sample_prediction(
    config: &SchedulerConfig,
    sampler: &'static str,
) -> Result<(), SamplerError> {
    if config.prediction_type == PredictionType::Sample {
        Err(SamplerError::UnsupportedPrediction {
            sampler,
            prediction: prediction_name(config.prediction_type),
        })
    } else {
        Ok(())
    }
}

/// The data prediction (`pred_original_sample`) of the sigma-based samplers at `sigma`, in
/// float32 as diffusers writes it: `x - sigma * m` (epsilon),
/// `m * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)` (v) and `m` (sample).
fn sigma_denoised(prediction: PredictionType, sigma: f32, x: Expr, m: Expr) -> Expr {
    match prediction {
        PredictionType::Epsilon => x - sigma * m,
        PredictionType::VPrediction => {
            m * (-sigma / sqrt_sigma_sq_plus_one(sigma)) + x / (sigma * sigma + 1.0)
        }
        PredictionType::Sample => m,
    }
}

/// Checks that a multistep sampler that last stepped at `previous` may take `step` now: the
/// first step may be any, every later one must be the next.
fn check_next(
    sampler: &'static str,
    previous: Option<usize>,
    step: usize,
) -> Result<(), SamplerError> {
    match previous {
        Some(previous) if step != previous + 1 => Err(SamplerError::OutOfOrder {
            sampler,
            step,
            expected: previous + 1,
        }),
        _ => Ok(()),
    }
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
        assert_eq!(SamplerKind::default(), SamplerKind::EULER_A);
    }
}
