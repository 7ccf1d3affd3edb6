//! Heun (`heun`, `heun_karras`): Karras et al.'s second-order Heun method on the
//! probability-flow ODE (their algorithm 1 without churn).
//!
//! Mirrors `HeunDiscreteScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_heun_discrete.py`) with its defaults for the keys our
//! config does not parse (no exponential or beta sigmas) and its `gamma = 0`. It has no
//! `rescale_betas_zero_snr`. Two model calls per step, the diffusers way: the timesteps are
//! `[t0, t1, t1, t2, t2, ..., t(n-1), t(n-1)]` and the sigmas `[s0, s1, s1, ..., s(n-1),
//! s(n-1), 0]` (`2 * steps - 1` calls). The first call of a step (even index) is an Euler step
//! from `s(i)` to `s(i+1)` that remembers its derivative; the second (odd index) averages
//! that with the derivative at the Euler point and redoes the step from the remembered sample.
//! The last call, to sigma 0, is a plain Euler step.

use alloc::vec::Vec;

use super::euler::{self, SigmaSchedule};
use super::{
    Sampler, SamplerError, SamplerKind, check_len, check_step, plain_alphas_cumprod,
    sigma_denoised, sqrt_sigma_sq_plus_one,
};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule::round_f32;

/// The Heun sampler.
#[derive(Debug, Clone)]
pub struct HeunDiscrete {
    karras: bool,
    prediction: PredictionType,
    /// `Some(range)` when `clip_sample` is on.
    clip: Option<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    /// The first call of the current step: its index, sample, derivative and `dt`.
    first: Option<FirstCall>,
}

#[derive(Debug, Clone)]
struct FirstCall {
    step: usize,
    sample: Vec<f32>,
    derivative: Vec<f32>,
    dt: f32,
}

impl HeunDiscrete {
    /// The sampler for `steps` steps (`2 * steps - 1` model calls); `karras` selects Karras
    /// sigmas (`use_karras_sigmas`). Spacing defaults to `linspace` when the config has none.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`].
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let acp = plain_alphas_cumprod(config)?;
        let schedule = SigmaSchedule::new(&acp, config, spacing, steps, karras, round_f32)?;
        // sigmas: [s0, s1, s1, ..., s(n-1), s(n-1), 0]; timesteps: [t0, t1, t1, ...].
        let s = &schedule.sigmas;
        let mut sigmas = Vec::with_capacity(2 * steps);
        sigmas.push(s[0]);
        for &sigma in &s[1..steps] {
            sigmas.extend([sigma, sigma]);
        }
        sigmas.push(0.0);
        let t = &schedule.timesteps;
        let mut timesteps = Vec::with_capacity(2 * steps - 1);
        timesteps.push(t[0]);
        for &timestep in &t[1..] {
            timesteps.extend([timestep, timestep]);
        }
        let init_noise_sigma = euler::init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            karras,
            prediction: config.prediction_type,
            clip: config
                .clip_sample
                .unwrap_or(false)
                .then(|| config.clip_sample_range.unwrap_or(1.0) as f32),
            timesteps,
            sigmas,
            init_noise_sigma,
            first: None,
        })
    }

    /// `pred_original_sample` at `sigma`, clipped when `clip_sample` is on.
    fn denoised(&self, sigma: f32, x: f32, m: f32) -> f32 {
        let x0 = sigma_denoised(self.prediction, sigma, x, m);
        match self.clip {
            Some(range) => x0.clamp(-range, range),
            None => x0,
        }
    }
}

impl Sampler for HeunDiscrete {
    fn kind(&self) -> SamplerKind {
        if self.karras {
            SamplerKind::HEUN_KARRAS
        } else {
            SamplerKind::HEUN
        }
    }

    fn order(&self) -> usize {
        2
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
        if step.is_multiple_of(2) {
            // First order: sigma_hat = sigma (gamma 0), an Euler step to the next sigma.
            let sigma = self.sigmas[step] as f32;
            let sigma_next = self.sigmas[step + 1] as f32;
            let dt = sigma_next - sigma;
            let derivative: Vec<f32> = sample
                .iter()
                .zip(model_output)
                .map(|(&x, &m)| (x - self.denoised(sigma, x, m)) / sigma)
                .collect();
            let prev = sample
                .iter()
                .zip(&derivative)
                .map(|(&x, &d)| x + d * dt)
                .collect();
            self.first = Some(FirstCall {
                step,
                sample: sample.to_vec(),
                derivative,
                dt,
            });
            return Ok(prev);
        }
        // Second order: the derivative at the Euler point (sigma_next), averaged with the first.
        let first = match self.first.take() {
            Some(first) if first.step + 1 == step => first,
            _ => {
                return Err(SamplerError::OutOfOrder {
                    sampler: self.kind().name(),
                    step,
                    expected: step - 1,
                });
            }
        };
        check_len("sample", first.sample.len(), sample.len())?;
        let sigma_next = self.sigmas[step] as f32;
        Ok(sample
            .iter()
            .zip(model_output)
            .zip(first.derivative.iter().zip(&first.sample))
            .map(|((&x, &m), (&d1, &x1))| {
                let d2 = (x - self.denoised(sigma_next, x, m)) / sigma_next;
                let derivative = (d1 + d2) / 2.0;
                x1 + derivative * first.dt
            })
            .collect())
    }

    fn add_noise(
        &self,
        original: &[f32],
        noise: &[f32],
        step: usize,
    ) -> Result<Vec<f32>, SamplerError> {
        euler::add_noise_sigma(&self.sigmas, self.timesteps.len(), original, noise, step)
    }
}
