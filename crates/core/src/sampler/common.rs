//! What the samplers share: the [`Schedule`] behind [`super::Sampler`]'s accessors, the sigma
//! schedule of diffusers' k-diffusion-style classes ([`SigmaSchedule`]), the `add_noise`
//! rules and the element-wise loops of a step.

use alloc::vec::Vec;

use super::program::{Expr, HostInputs, Input, NOISE, SAMPLE, StepProgram};
use super::{
    SamplerError, SamplerKind, check_len, check_step, sigma_alphas_cumprod, sigma_denoised,
    sqrt_sigma_sq_plus_one,
};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule::{self, round_f32};

/// A sampler's schedule as its caller sees it: which sampler it is, the timestep of each model
/// call, the sigmas (for the samplers that have them), `init_noise_sigma`, and the noise
/// parametrization that decides how the UNet input is scaled and how `add_noise` noises. Every
/// sampler holds one; [`super::Sampler`]'s accessors and `add_noise` read it.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub(super) kind: SamplerKind,
    pub(super) timesteps: Vec<f64>,
    /// Empty for the samplers without sigmas (LCM, DDIM, PNDM).
    pub(super) sigmas: Vec<f64>,
    pub(super) init_noise_sigma: f64,
    noising: Noising,
    /// The sigma the UNet input is scaled for at each call where that is not `sigmas[step]`
    /// (DPM2's midpoint calls).
    input_sigmas: Option<Vec<f32>>,
}

/// How a sampler's latents relate to the noise level of a model call.
#[derive(Debug, Clone)]
enum Noising {
    /// k-diffusion's `x + sigma * noise`, the UNet input divided by `(sigma ** 2 + 1) ** 0.5`
    /// (Euler, Heun, DPM2 and the samplers on their schedules).
    Sigma,
    /// DPM-Solver's `alpha_t * x + sigma_t * noise` of [`alpha_sigma`], the UNet input
    /// unscaled.
    DpmSolver,
    /// DDPM's `sqrt(acp) * x + sqrt(1 - acp) * noise` with `acp` the `alphas_cumprod` (float32)
    /// at each call's timestep, the UNet input unscaled (LCM, DDIM, PNDM).
    AlphasCumprod(Vec<f32>),
}

impl Schedule {
    /// The schedule of a k-diffusion-style sampler ([`Noising::Sigma`]).
    pub(super) fn with_sigmas(
        kind: SamplerKind,
        timesteps: Vec<f64>,
        sigmas: Vec<f64>,
        init_noise_sigma: f64,
    ) -> Self {
        Self {
            kind,
            timesteps,
            sigmas,
            init_noise_sigma,
            noising: Noising::Sigma,
            input_sigmas: None,
        }
    }

    /// This schedule with the UNet input of each call scaled for `input_sigmas[step]` instead
    /// of `sigmas[step]`.
    pub(super) fn with_input_sigmas(self, input_sigmas: Vec<f32>) -> Self {
        Self {
            input_sigmas: Some(input_sigmas),
            ..self
        }
    }

    /// The schedule of DPM-Solver++ 2M: sigmas, unit starting noise ([`Noising::DpmSolver`]).
    pub(super) fn dpm_solver(kind: SamplerKind, timesteps: Vec<f64>, sigmas: Vec<f64>) -> Self {
        Self {
            kind,
            timesteps,
            sigmas,
            init_noise_sigma: 1.0,
            noising: Noising::DpmSolver,
            input_sigmas: None,
        }
    }

    /// The schedule of a sampler that steps between training timesteps (LCM, DDIM, PNDM): no
    /// sigmas, unit starting noise ([`Noising::AlphasCumprod`]; every timestep must index
    /// `alphas_cumprod`).
    pub(super) fn without_sigmas(
        kind: SamplerKind,
        timesteps: Vec<f64>,
        alphas_cumprod: &[f64],
    ) -> Self {
        let acp = timesteps
            .iter()
            .map(|&t| alphas_cumprod[t as usize] as f32)
            .collect();
        Self {
            kind,
            timesteps,
            sigmas: Vec::new(),
            init_noise_sigma: 1.0,
            noising: Noising::AlphasCumprod(acp),
            input_sigmas: None,
        }
    }

    /// The number of model calls.
    pub(super) fn calls(&self) -> usize {
        self.timesteps.len()
    }

    /// [`SamplerError::StepOutOfRange`] unless `step` is a model call of this schedule.
    pub(super) fn check_step(&self, step: usize) -> Result<(), SamplerError> {
        check_step(step, self.calls())
    }

    /// Checks the step and the lengths of a step's inputs.
    pub(super) fn check_step_inputs(
        &self,
        step: usize,
        sample: &[f32],
        model_output: &[f32],
    ) -> Result<(), SamplerError> {
        self.check_step(step)?;
        check_len("model_output", sample.len(), model_output.len())
    }

    /// `sigmas[i]` as float32 (the samplers' step arithmetic).
    pub(super) fn sigma(&self, i: usize) -> f32 {
        self.sigmas[i] as f32
    }

    /// [`super::Sampler::sigmas`].
    pub(super) fn sigmas(&self) -> Option<&[f64]> {
        (!self.sigmas.is_empty()).then_some(self.sigmas.as_slice())
    }

    /// [`super::Sampler::model_input_divisor`]: `(sigma ** 2 + 1) ** 0.5` of the call's sigma
    /// (`sigmas[step]`, or the input sigma where one is set) for [`Noising::Sigma`], else 1.
    pub(super) fn model_input_divisor(&self, step: usize) -> Result<f32, SamplerError> {
        self.check_step(step)?;
        Ok(match self.noising {
            Noising::Sigma => sqrt_sigma_sq_plus_one(match &self.input_sigmas {
                Some(input_sigmas) => input_sigmas[step],
                None => self.sigma(step),
            }),
            Noising::DpmSolver | Noising::AlphasCumprod(_) => 1.0,
        })
    }

    /// [`super::Sampler::add_noise`], in float32: `x + sigma * noise`,
    /// `alpha_t * x + sigma_t * noise` or `sqrt(acp) * x + sqrt(1 - acp) * noise` at `step`.
    pub(super) fn add_noise(
        &self,
        original: &[f32],
        noise: &[f32],
        step: usize,
    ) -> Result<Vec<f32>, SamplerError> {
        self.check_step(step)?;
        check_len("noise", original.len(), noise.len())?;
        let program = StepProgram::next(self.noising(
            step,
            Expr::Input(Input::Image),
            Expr::Input(Input::StartNoise),
        )?);
        let inputs = HostInputs {
            sample: original,
            image: original,
            start_noise: noise,
            ..HostInputs::default()
        };
        program.compile()?.run(&inputs, &mut Vec::new())
    }

    /// `add_noise` of clean latents `x` with `noise` at `step`, per element (see
    /// [`Schedule::add_noise`]).
    pub fn noising(&self, step: usize, x: Expr, noise: Expr) -> Result<Expr, SamplerError> {
        self.check_step(step)?;
        Ok(match &self.noising {
            Noising::Sigma => x + noise * self.sigma(step),
            Noising::DpmSolver => {
                let (alpha, sigma) = alpha_sigma(self.sigma(step));
                alpha * x + sigma * noise
            }
            Noising::AlphasCumprod(acp) => {
                let sqrt_alpha = libm::sqrtf(acp[step]);
                let sqrt_one_minus = libm::sqrtf(1.0 - acp[step]);
                sqrt_alpha * x + sqrt_one_minus * noise
            }
        })
    }
}

/// DPM-Solver's `alpha_t = 1 / (sigma ** 2 + 1) ** 0.5` and `sigma_t = sigma * alpha_t`, in
/// float32.
pub(super) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / sqrt_sigma_sq_plus_one(sigma);
    (alpha, sigma * alpha)
}

/// Which diffusers class's `set_timesteps` a [`SigmaSchedule`] follows. They run the same code
/// and differ in the `alphas_cumprod` (only Euler reads `rescale_betas_zero_snr`) and in the
/// Karras timesteps (KDPM2 rounds them to whole numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SigmaClass {
    /// `EulerDiscreteScheduler`, also the schedule of Euler ancestral, DPM++ 2S ancestral and
    /// DPM++ 2M v2.
    Euler,
    /// `HeunDiscreteScheduler`.
    Heun,
    /// `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`.
    KDpm2,
}

/// The schedule of the k-diffusion-style classes of diffusers (Euler, Heun, DPM2): timesteps,
/// sigmas with a final 0, and the log training sigmas that map a sigma back to a timestep.
pub(super) struct SigmaSchedule {
    /// One timestep per step.
    pub timesteps: Vec<f64>,
    /// One sigma per step and a final 0, float32 values.
    pub sigmas: Vec<f64>,
    /// `np.log` of the training sigmas (float32 values), for [`schedule::sigma_to_t`].
    pub log_sigmas: Vec<f64>,
    /// `init_noise_sigma`, in float32: the largest sigma, or for `leading` spacing
    /// `(max ** 2 + 1) ** 0.5`.
    pub init_noise_sigma: f64,
}

impl SigmaSchedule {
    /// The `set_timesteps` of Euler, Heun and DPM2 (the same code in each class), spacing
    /// `linspace` where the config has none: spaced timesteps rounded to float32 and sigmas
    /// interpolated in the training sigmas at them; with `karras`, the Karras sigmas between
    /// the first and last of those and timesteps by [`schedule::sigma_to_t`] (Euler and Heun
    /// keep the fraction as float32, DPM2 rounds to whole numbers); a final sigma 0.
    pub(super) fn new(
        config: &SchedulerConfig,
        steps: usize,
        karras: bool,
        class: SigmaClass,
    ) -> Result<Self, SamplerError> {
        let (alphas_cumprod, karras_timestep): (_, fn(f64) -> f64) = match class {
            SigmaClass::Euler => (sigma_alphas_cumprod(config)?, round_f32),
            SigmaClass::Heun => (plain_alphas_cumprod(config)?, round_f32),
            SigmaClass::KDpm2 => (plain_alphas_cumprod(config)?, libm::rint),
        };
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let table = schedule::train_sigmas(&alphas_cumprod);
        let log_sigmas = schedule::log_sigmas(&table);
        let mut timesteps: Vec<f64> = schedule::timesteps(
            spacing,
            config.num_train_timesteps,
            steps,
            config.steps_offset,
        )?
        .into_iter()
        .map(round_f32)
        .collect();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| schedule::interp(t, &table))
            .collect();
        if karras {
            let (Some(&sigma_max), Some(&sigma_min)) = (sigmas.first(), sigmas.last()) else {
                return Err(schedule::ScheduleError::NoSteps.into());
            };
            sigmas = schedule::karras_sigmas(sigma_min, sigma_max, steps);
            timesteps = sigmas
                .iter()
                .map(|&s| karras_timestep(schedule::sigma_to_t(s, &log_sigmas)))
                .collect();
        }
        sigmas.push(0.0);
        let sigmas: Vec<f64> = sigmas.into_iter().map(round_f32).collect();
        let max = sigmas.iter().copied().fold(0.0_f64, f64::max) as f32;
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => f64::from(max),
            TimestepSpacing::Leading => f64::from(sqrt_sigma_sq_plus_one(max)),
        };
        Ok(Self {
            timesteps,
            sigmas,
            log_sigmas,
            init_noise_sigma,
        })
    }

    /// The [`Schedule`] of a one-call sampler on exactly these timesteps and sigmas.
    pub(super) fn into_schedule(self, kind: SamplerKind) -> Schedule {
        Schedule::with_sigmas(kind, self.timesteps, self.sigmas, self.init_noise_sigma)
    }
}

/// [`schedule::alphas_cumprod`] of `config` without `rescale_betas_zero_snr`, for the classes
/// that have no such key (Heun, DPM2, DPM2 ancestral, PNDM), so `from_config` drops it.
pub(super) fn plain_alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f64>, SamplerError> {
    if config.rescale_betas_zero_snr == Some(true) {
        let mut plain = config.clone();
        plain.rescale_betas_zero_snr = None;
        Ok(schedule::alphas_cumprod(&plain)?)
    } else {
        Ok(schedule::alphas_cumprod(config)?)
    }
}

/// k-diffusion's `get_ancestral_step` noise, in float32: `sigma_up = (to^2 (from^2 - to^2) /
/// from^2) ** 0.5`.
pub(super) fn sigma_up(from: f32, to: f32) -> f32 {
    libm::sqrtf(to * to * (from * from - to * to) / (from * from))
}

/// k-diffusion's `get_ancestral_step` target, in float32: `sigma_down = (to^2 - up^2) ** 0.5`.
/// Mathematically `to^2 - up^2 = to^4 / from^2 > 0`. When rounding cancels it to 0 or below (a
/// first sigma of 20000 next to one of 0.006, as squaredcos_cap_v2 schedules give), where
/// diffusers gets 0 or NaN and DPM2 ancestral then a NaN image (its midpoint sigma is 0, and
/// its second call divides by it), the exact form `to^2 / from` is used instead.
pub(super) fn sigma_down(from: f32, to: f32, up: f32) -> f32 {
    let squared = to * to - up * up;
    if squared > 0.0 {
        libm::sqrtf(squared)
    } else if from > 0.0 {
        to * to / from
    } else {
        0.0
    }
}

/// k-diffusion's `to_d`: the ODE derivative `(x - denoised) / sigma`.
pub(super) fn to_d(x: Expr, denoised: Expr, sigma: f32) -> Expr {
    (x - denoised) / sigma
}

/// An Euler step by `dt` from `sigma`: `x + (x - D(x)) / sigma * dt` with the data prediction
/// `D` of [`sigma_denoised`], in float32.
pub(super) fn euler_step(prediction: PredictionType, sigma: f32, dt: f32) -> Expr {
    let denoised = sigma_denoised(prediction, sigma, SAMPLE, super::program::OUTPUT);
    SAMPLE + to_d(SAMPLE, denoised, sigma) * dt
}

/// `prev` plus `scale` times fresh standard normal noise: the ancestral samplers'
/// `+ sigma_up * noise`, DDIM's `+ std_dev * noise`.
pub(super) fn add_fresh_noise(prev: Expr, scale: f32) -> Expr {
    prev + NOISE * scale
}

/// The second call of a two-call step takes what the first call kept: the first call must be
/// the one just before (`step - 1`), else [`SamplerError::OutOfOrder`].
pub(super) fn take_first_call<T>(
    first: &mut Option<(usize, T)>,
    sampler: &'static str,
    step: usize,
) -> Result<T, SamplerError> {
    match first.take() {
        Some((first_step, kept)) if first_step + 1 == step => Ok(kept),
        _ => Err(SamplerError::OutOfOrder {
            sampler,
            step,
            expected: step - 1,
        }),
    }
}

/// `Some(range)` when the config's `clip_sample` (default `default`) is on, with
/// `clip_sample_range` (default 1).
pub(super) fn clip_range(config: &SchedulerConfig, default: bool) -> Option<f32> {
    config
        .clip_sample
        .unwrap_or(default)
        .then(|| config.clip_sample_range.unwrap_or(1.0) as f32)
}

/// The spaced timesteps of DDIM and PNDM, descending: [`schedule::timesteps`] with `leading`
/// spacing where the config has none, rounded half-to-even to whole numbers as diffusers casts
/// them to int64 (`linspace`; the others are whole already).
pub(super) fn whole_timesteps(
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Vec<f64>, SamplerError> {
    let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
    Ok(schedule::timesteps(
        spacing,
        config.num_train_timesteps,
        steps,
        config.steps_offset,
    )?
    .into_iter()
    .map(libm::rint)
    .collect())
}

/// [`SamplerError::TimestepOutOfRange`] for the first of `timesteps` that is not a training
/// timestep (a large `steps_offset`).
pub(super) fn check_training_range(
    timesteps: &[f64],
    num_train_timesteps: usize,
) -> Result<(), SamplerError> {
    match timesteps
        .iter()
        .find(|&&t| !(t >= 0.0 && t < num_train_timesteps as f64))
    {
        Some(&timestep) => Err(SamplerError::TimestepOutOfRange {
            timestep,
            num_train_timesteps,
        }),
        None => Ok(()),
    }
}

/// The `alphas_cumprod` before the first training timestep (diffusers' `final_alpha_cumprod`):
/// 1 under `set_alpha_to_one` (default `default`), else `alphas_cumprod[0]`.
pub(super) fn final_alpha_cumprod(
    config: &SchedulerConfig,
    default: bool,
    alphas_cumprod: &[f64],
) -> f64 {
    if config.set_alpha_to_one.unwrap_or(default) {
        1.0
    } else {
        alphas_cumprod[0]
    }
}
