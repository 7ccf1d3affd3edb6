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

use alloc::vec;
use alloc::vec::Vec;

use super::common::{Schedule, SigmaClass, SigmaSchedule, clip_range, take_first_call, to_d};
use super::program::{Expr, OUTPUT, SAMPLE, StepProgram, kept};
use super::{Sampler, SamplerError, SamplerKind, sigma_denoised};
use crate::config::{PredictionType, SchedulerConfig};

/// The Heun sampler.
#[derive(Debug, Clone)]
pub struct HeunDiscrete {
    schedule: Schedule,
    prediction: PredictionType,
    /// `Some(range)` when `clip_sample` is on.
    clip: Option<f32>,
    /// The first call of the current step: its index and `dt` (it keeps its sample and
    /// derivative).
    first: Option<(usize, f32)>,
    host_kept: Vec<Vec<f32>>,
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
            host_kept: Vec::new(),
        })
    }

    /// `pred_original_sample` at `sigma`, clipped when `clip_sample` is on.
    fn denoised(&self, sigma: f32) -> Expr {
        let x0 = sigma_denoised(self.prediction, sigma, SAMPLE, OUTPUT);
        match self.clip {
            Some(range) => x0.clamp(range),
            None => x0,
        }
    }
}

impl Sampler for HeunDiscrete {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        if step.is_multiple_of(2) {
            // First order: sigma_hat = sigma (gamma 0), an Euler step to the next sigma; the
            // sample and the derivative are kept.
            let sigma = self.schedule.sigma(step);
            let sigma_next = self.schedule.sigma(step + 1);
            let dt = sigma_next - sigma;
            let derivative = to_d(SAMPLE, self.denoised(sigma), sigma);
            self.first = Some((step, dt));
            return Ok(StepProgram::next(SAMPLE + derivative.clone() * dt)
                .keeping(vec![SAMPLE, derivative]));
        }
        // Second order: the derivative at the Euler point (sigma_next), averaged with the first.
        let dt = take_first_call(&mut self.first, self.schedule.kind.name(), step)?;
        let sigma_next = self.schedule.sigma(step);
        let d2 = to_d(SAMPLE, self.denoised(sigma_next), sigma_next);
        let derivative = (kept(1) + d2) / 2.0;
        Ok(StepProgram::next(kept(0) + derivative * dt))
    }
}
