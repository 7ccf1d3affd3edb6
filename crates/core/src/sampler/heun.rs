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

use super::common::{Schedule, SigmaClass, SigmaSchedule, clip_range, map2, take_first_call, to_d};
use super::{Sampler, SamplerError, SamplerKind, check_len, sigma_denoised};
use crate::config::{PredictionType, SchedulerConfig};

/// The Heun sampler.
#[derive(Debug, Clone)]
pub struct HeunDiscrete {
    schedule: Schedule,
    prediction: PredictionType,
    /// `Some(range)` when `clip_sample` is on.
    clip: Option<f32>,
    /// The first call of the current step: its index, and its sample, derivative and `dt`.
    first: Option<(usize, FirstCall)>,
}

#[derive(Debug, Clone)]
struct FirstCall {
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
        let schedule = SigmaSchedule::new(config, steps, karras, SigmaClass::Heun)?;
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
        let kind = SamplerKind {
            karras,
            ..SamplerKind::HEUN
        };
        Ok(Self {
            schedule: Schedule::with_sigmas(kind, timesteps, sigmas, schedule.init_noise_sigma),
            prediction: config.prediction_type,
            clip: clip_range(config, false),
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
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        _noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError> {
        self.schedule
            .check_step_inputs(step, sample, model_output)?;
        if step.is_multiple_of(2) {
            // First order: sigma_hat = sigma (gamma 0), an Euler step to the next sigma.
            let sigma = self.schedule.sigma(step);
            let sigma_next = self.schedule.sigma(step + 1);
            let dt = sigma_next - sigma;
            let derivative = map2(sample, model_output, |x, m| {
                to_d(x, self.denoised(sigma, x, m), sigma)
            });
            let prev = map2(sample, &derivative, |x, d| x + d * dt);
            let first = FirstCall {
                sample: sample.to_vec(),
                derivative,
                dt,
            };
            self.first = Some((step, first));
            return Ok(prev);
        }
        // Second order: the derivative at the Euler point (sigma_next), averaged with the first.
        let first = take_first_call(&mut self.first, self.schedule.kind.name(), step)?;
        check_len("sample", first.sample.len(), sample.len())?;
        let sigma_next = self.schedule.sigma(step);
        Ok(sample
            .iter()
            .zip(model_output)
            .zip(first.derivative.iter().zip(&first.sample))
            .map(|((&x, &m), (&d1, &x1))| {
                let d2 = to_d(x, self.denoised(sigma_next, x, m), sigma_next);
                let derivative = (d1 + d2) / 2.0;
                x1 + derivative * first.dt
            })
            .collect())
    }
}
