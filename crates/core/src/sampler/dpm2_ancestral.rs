//! DPM2 ancestral (`dpm2_a`, `dpm2_a_karras`): k-diffusion's `sample_dpm_2_ancestral`: a
//! DPM-Solver-2 step down to `sigma_down`, then fresh noise of standard deviation `sigma_up`.
//!
//! Mirrors `KDPM2AncestralDiscreteScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_k_dpm_2_ancestral_discrete.py`) with its defaults for the
//! keys our config does not parse. It has no `rescale_betas_zero_snr`, no clipping, and no
//! `sample` prediction (refused, as diffusers raises). With the float32 sigmas
//! `S = [s0, ..., s(n-1), 0]`, per step `i` (torch's float32 arithmetic)
//!
//! - `up(i) = (S(i+1)^2 (S(i)^2 - S(i+1)^2) / S(i)^2) ** 0.5`, `down(i) = (S(i+1)^2 - up(i)^2) ** 0.5`,
//! - the midpoint `m(i) = exp(lerp(log S(i), log down(i), 0.5))`, `m(n-1) = m(n) = 0`,
//!
//! and the model calls are
//!
//! - call `2i` at `S(i)` (timestep `t(i)`): `x_mid = x + (x - x0) / S(i) * (m(i) - S(i))`;
//! - call `2i + 1` at `m(i)` (timestep `sigma_to_t(m(i))`): `x_next = x + (x_mid - x0_mid) /
//!   m(i) * (down(i) - S(i)) + up(i) * noise` from the first call's `x`, one noise draw;
//!
//! and the last call `2n - 2`, whose midpoint is 0, an Euler step to 0 without noise (so
//! `steps - 1` draws in all). `sigmas()` are diffusers' `[S0, S1, S1, ..., S(n-1), S(n-1), 0,
//! 0, 0]`.

use alloc::vec;
use alloc::vec::Vec;

use super::common::{
    Schedule, SigmaClass, SigmaSchedule, add_fresh_noise, sigma_down, sigma_up, take_first_call,
};
use super::dpm2::{call_timesteps, first_call, input_sigmas, interleave, lerp_half, second_call};
use super::program::{SAMPLE, StepProgram};
use super::{Sampler, SamplerError, SamplerKind, refuse_sample_prediction};
use crate::config::{PredictionType, SchedulerConfig};

/// The DPM2 ancestral sampler.
#[derive(Debug, Clone)]
pub struct KDpm2Ancestral {
    /// Its sigmas are diffusers' `sigmas`: `[S0, S1, S1, ..., S(n), S(n), S(n)]` (`S(n) = 0`).
    schedule: Schedule,
    prediction: PredictionType,
    /// diffusers' `sigmas_interpol`, `sigmas_up` and `sigmas_down`, interleaved the same way.
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    /// The first call of the current step: its index (it keeps its sample).
    first: Option<(usize, ())>,
    host_kept: Vec<Vec<f32>>,
}

impl KDpm2Ancestral {
    /// The sampler for `steps` steps (`2 * steps - 1` model calls); `karras` selects Karras
    /// sigmas (`use_karras_sigmas`; Karras timesteps rounded to whole numbers, as diffusers
    /// does). Spacing defaults to `linspace` when the config has none.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`] and [`SamplerError::UnsupportedPrediction`] for `sample`.
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        refuse_sample_prediction(config, SamplerKind::DPM2_A.name())?;
        let schedule = SigmaSchedule::new(config, steps, karras, SigmaClass::KDpm2)?;
        let s: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        let n = s.len() - 1;
        let next = |i: usize| if i < n { s[i + 1] } else { 0.0 };
        // sigmas_up is NaN at the final 0 in diffusers (0 / 0); it is never used there.
        let up: Vec<f32> = (0..=n).map(|i| sigma_up(s[i], next(i))).collect();
        let down: Vec<f32> = (0..=n)
            .map(|i| {
                if i == n {
                    0.0
                } else {
                    sigma_down(s[i], next(i), up[i])
                }
            })
            .collect();
        let interpol: Vec<f32> = (0..=n)
            .map(|i| {
                if i + 2 > n {
                    0.0
                } else {
                    libm::expf(lerp_half(libm::logf(s[i]), libm::logf(down[i])))
                }
            })
            .collect();
        let kind = SamplerKind {
            karras,
            ..SamplerKind::DPM2_A
        };
        let timesteps = call_timesteps(&schedule, &interpol);
        let sigmas = interleave(&schedule.sigmas);
        let sigmas_interpol = interleave(&interpol);
        let input_sigmas = input_sigmas(&sigmas, timesteps.len(), |call| sigmas_interpol[call - 1]);
        Ok(Self {
            schedule: Schedule::with_sigmas(kind, timesteps, sigmas, schedule.init_noise_sigma)
                .with_input_sigmas(input_sigmas),
            prediction: config.prediction_type,
            sigmas_interpol,
            sigmas_up: interleave(&up),
            sigmas_down: interleave(&down),
            first: None,
            host_kept: Vec::new(),
        })
    }
}

impl Sampler for KDpm2Ancestral {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        let prediction = self.prediction;
        if step.is_multiple_of(2) {
            // First order: an Euler step from sigma to the midpoint sigma_interpol.
            let sigma = self.schedule.sigma(step);
            let sigma_interpol = self.sigmas_interpol[step];
            self.first = Some((step, ()));
            return Ok(
                StepProgram::next(first_call(prediction, sigma, sigma_interpol))
                    .keeping(vec![SAMPLE]),
            );
        }
        take_first_call(&mut self.first, self.schedule.kind.name(), step)?;
        // DPM-Solver-2 down to sigma_down from the first sample, then the ancestral noise.
        let sigma = self.schedule.sigma(step - 1);
        let sigma_interpol = self.sigmas_interpol[step - 1];
        let dt = self.sigmas_down[step - 1] - sigma;
        let prev = second_call(prediction, sigma_interpol, dt);
        Ok(StepProgram::next(add_fresh_noise(
            prev,
            self.sigmas_up[step - 1],
        )))
    }
}
