//! Euler (`euler`, `euler_karras`): Karras et al.'s Euler method on the probability-flow ODE.
//!
//! Mirrors `EulerDiscreteScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_euler_discrete.py`) with its defaults for the keys our
//! config does not parse (`interpolation_type: linear`, `final_sigmas_type: zero`,
//! `timestep_type: discrete`, no `sigma_min`/`sigma_max`) and `s_churn` 0 (the pipelines'
//! default), so the step is deterministic.

use alloc::vec::Vec;

use super::{
    Sampler, SamplerError, SamplerKind, check_len, check_step, sigma_alphas_cumprod,
    sqrt_sigma_sq_plus_one,
};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule::{self, round_f32};

/// The Euler sampler.
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    karras: bool,
    prediction: PredictionType,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
}

impl EulerDiscrete {
    /// The sampler for `steps` steps; `karras` selects Karras sigmas (`use_karras_sigmas`).
    /// Spacing defaults to `linspace` when the config has none.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`].
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let (timesteps, sigmas) = sigma_schedule(config, spacing, steps, karras)?;
        let init_noise_sigma = init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            karras,
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            init_noise_sigma,
        })
    }
}

/// The timesteps and sigmas of diffusers' Euler `set_timesteps`, shared with Euler ancestral
/// and the samplers on Euler's schedule: spaced timesteps as float32 (`linspace` keeps its
/// fractions), sigmas by `np.interp` of the training sigmas at them, or with `karras` the
/// Karras sigmas between the first and last of those and timesteps by
/// [`schedule::sigma_to_t`]; a final sigma 0; all float32 values.
pub(super) fn sigma_schedule(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    steps: usize,
    karras: bool,
) -> Result<(Vec<f64>, Vec<f64>), SamplerError> {
    let acp = sigma_alphas_cumprod(config)?;
    let schedule = SigmaSchedule::new(&acp, config, spacing, steps, karras, round_f32)?;
    Ok((schedule.timesteps, schedule.sigmas))
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
}

impl SigmaSchedule {
    /// The `set_timesteps` of Euler, Heun and DPM2 (the same code in each class) over
    /// `alphas_cumprod`: spaced timesteps rounded to float32 and sigmas interpolated at them;
    /// with `karras`, the Karras sigmas between the first and last of those and timesteps
    /// `karras_timestep(sigma_to_t(sigma))` (Euler and Heun keep the fraction as float32,
    /// DPM2 rounds to whole numbers).
    pub(super) fn new(
        alphas_cumprod: &[f64],
        config: &SchedulerConfig,
        spacing: TimestepSpacing,
        steps: usize,
        karras: bool,
        karras_timestep: fn(f64) -> f64,
    ) -> Result<Self, SamplerError> {
        let table = schedule::train_sigmas(alphas_cumprod);
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
        let sigmas = sigmas.into_iter().map(round_f32).collect();
        Ok(Self {
            timesteps,
            sigmas,
            log_sigmas,
        })
    }
}

/// `init_noise_sigma` of the Euler samplers, in float32: the largest sigma, or for `leading`
/// spacing `(max ** 2 + 1) ** 0.5`.
pub(super) fn init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(0.0_f64, f64::max) as f32;
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => f64::from(max),
        TimestepSpacing::Leading => f64::from(sqrt_sigma_sq_plus_one(max)),
    }
}

/// `x + sigma * noise` at `step` (diffusers' Euler `add_noise`), in float32.
pub(super) fn add_noise_sigma(
    sigmas: &[f64],
    steps: usize,
    original: &[f32],
    noise: &[f32],
    step: usize,
) -> Result<Vec<f32>, SamplerError> {
    check_step(step, steps)?;
    check_len("noise", original.len(), noise.len())?;
    let sigma = sigmas[step] as f32;
    Ok(original
        .iter()
        .zip(noise)
        .map(|(&x, &n)| x + n * sigma)
        .collect())
}

impl Sampler for EulerDiscrete {
    fn kind(&self) -> SamplerKind {
        if self.karras {
            SamplerKind::EULER_KARRAS
        } else {
            SamplerKind::EULER
        }
    }

    fn order(&self) -> usize {
        1
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn model_input_divisor(&self, step: usize) -> Result<f32, SamplerError> {
        check_step(step, self.timesteps.len())?;
        Ok(sqrt_sigma_sq_plus_one(self.sigmas[step] as f32))
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        _noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError> {
        check_step(step, self.timesteps.len())?;
        check_len("model_output", sample.len(), model_output.len())?;
        // s_churn = 0: gamma = 0 and sigma_hat = sigma.
        let sigma = self.sigmas[step] as f32;
        let dt = self.sigmas[step + 1] as f32 - sigma;
        let (c_out, c_skip_divisor) = (-sigma / sqrt_sigma_sq_plus_one(sigma), sigma * sigma + 1.0);
        let prediction = self.prediction;
        Ok(sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let denoised = match prediction {
                    PredictionType::Epsilon => x - sigma * m,
                    PredictionType::VPrediction => m * c_out + x / c_skip_divisor,
                    PredictionType::Sample => m,
                };
                let derivative = (x - denoised) / sigma;
                x + derivative * dt
            })
            .collect())
    }

    fn add_noise(
        &self,
        original: &[f32],
        noise: &[f32],
        step: usize,
    ) -> Result<Vec<f32>, SamplerError> {
        add_noise_sigma(&self.sigmas, self.timesteps.len(), original, noise, step)
    }
}
