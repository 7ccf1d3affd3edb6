//! DPM++ 2S ancestral (`dpm++2s_a`, `dpm++2s_a_karras`): Lu et al.'s DPM-Solver++(2S), a
//! single-step second-order solver in data-prediction form, taking each step down to
//! `sigma_down` and adding fresh noise of standard deviation `sigma_up`.
//!
//! diffusers has no such scheduler; this is k-diffusion's `sample_dpmpp_2s_ancestral`
//! (`k_diffusion/sampling.py`, AUTOMATIC1111's "DPM++ 2S a") with `eta = 1`, `s_noise = 1`,
//! on the schedule of diffusers' `EulerDiscreteScheduler` (its timesteps, sigmas,
//! `init_noise_sigma` and input scaling; with `karras`, Euler's Karras schedule). With
//! `lambda = -log(sigma)` and, per step `i`, `(down, up)` of k-diffusion's
//! `get_ancestral_step(s(i), s(i+1))`, `h = log(s(i) / down)` and the midpoint
//! `s_mid = exp(-(-log s(i) + h / 2))` (the geometric mean of `s(i)` and `down`):
//!
//! - call `2i` at `s(i)`: `x_2 = (s_mid / s(i)) x - expm1(-h / 2) D(x, s(i))`;
//! - call `2i + 1` at `s_mid`: `x_next = (down / s(i)) x - expm1(-h) D(x_2, s_mid) + up *
//!   noise` (one draw, when `s(i+1) > 0`);
//!
//! and the last step (to sigma 0, where `down = 0`) is one Euler step, one call: so
//! `2 * steps - 1` calls, as DPM2's, listed the diffusers way. The midpoint call's timestep
//! is `sigma_to_t(s_mid)` (diffusers' log-sigma interpolation, as for Euler's Karras
//! timesteps), a float32 value. The arithmetic is k-diffusion's, in float32: `lambda`,
//! `sigma_fn`, the ratios and `expm1` on float32 scalars.

use alloc::vec;
use alloc::vec::Vec;

use super::common::{
    Schedule, SigmaClass, SigmaSchedule, add_fresh_noise, euler_step, sigma_down, sigma_up,
    take_first_call,
};
use super::program::{OUTPUT, SAMPLE, StepProgram, kept};
use super::{Sampler, SamplerError, SamplerKind, refuse_sample_prediction, sigma_denoised};
use crate::config::{PredictionType, SchedulerConfig};
use crate::schedule::{self, round_f32};

/// The DPM++ 2S ancestral sampler.
#[derive(Debug, Clone)]
pub struct DpmPP2SAncestral {
    /// Its sigmas are the sigma of each model call, then 0.
    schedule: Schedule,
    prediction: PredictionType,
    calls: Vec<Call>,
    /// The first call of the current step: its index (it keeps its sample).
    first: Option<(usize, ())>,
    host_kept: Vec<Vec<f32>>,
}

/// What one model call does, with its float32 coefficients.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// The first call of a two-call step: `x_2 = ratio * x - expm1 * D`.
    First { sigma: f32, ratio: f32, expm1: f32 },
    /// The second: `x_next = ratio * x - expm1 * D_2 (+ up * noise)`.
    Second {
        sigma: f32,
        ratio: f32,
        expm1: f32,
        up: Option<f32>,
    },
    /// A step whose `sigma_down` is 0: `x + (x - D) / sigma * (0 - sigma) (+ up * noise)`.
    Euler {
        sigma: f32,
        dt: f32,
        up: Option<f32>,
    },
}

/// k-diffusion's `get_ancestral_step(sigma_from, sigma_to, eta=1)` in float32:
/// `up = min(to, (to^2 (from^2 - to^2) / from^2) ** 0.5)`, `down = (to^2 - up^2) ** 0.5`.
fn ancestral_step(from: f32, to: f32) -> (f32, f32) {
    let up = to.min(sigma_up(from, to));
    (sigma_down(from, to, up), up)
}

impl DpmPP2SAncestral {
    /// The sampler for `steps` steps (`2 * steps - 1` model calls) on Euler's schedule;
    /// `karras` selects Euler's Karras schedule. Spacing defaults to `linspace` when the config
    /// has none, as for Euler.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`], and [`SamplerError::UnsupportedPrediction`] for
    /// `prediction_type: sample` (as Euler ancestral).
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        refuse_sample_prediction(config, SamplerKind::DPMPP_2S_A.name())?;
        let schedule = SigmaSchedule::new(config, steps, karras, SigmaClass::Euler)?;
        let mut calls = Vec::with_capacity(2 * steps);
        let mut timesteps = Vec::with_capacity(2 * steps);
        let mut sigmas = Vec::with_capacity(2 * steps);
        for (i, &timestep) in schedule.timesteps.iter().enumerate() {
            let sigma = schedule.sigmas[i] as f32;
            let sigma_next = schedule.sigmas[i + 1] as f32;
            let (down, up) = ancestral_step(sigma, sigma_next);
            let up = (sigma_next > 0.0).then_some(up);
            timesteps.push(timestep);
            sigmas.push(f64::from(sigma));
            if down == 0.0 {
                calls.push(Call::Euler {
                    sigma,
                    dt: down - sigma,
                    up,
                });
                continue;
            }
            // t_fn = -log(sigma), sigma_fn = exp(-t), r = 1/2, all float32 tensors.
            let t = -libm::logf(sigma);
            let t_next = -libm::logf(down);
            let h = t_next - t;
            let s = t + 0.5 * h;
            let sigma_t = libm::expf(-t);
            let sigma_mid = libm::expf(-s);
            calls.push(Call::First {
                sigma,
                ratio: sigma_mid / sigma_t,
                expm1: libm::expm1f(-h * 0.5),
            });
            calls.push(Call::Second {
                sigma: sigma_mid,
                ratio: libm::expf(-t_next) / sigma_t,
                expm1: libm::expm1f(-h),
                up,
            });
            timesteps.push(round_f32(schedule::sigma_to_t(
                f64::from(sigma_mid),
                &schedule.log_sigmas,
            )));
            sigmas.push(f64::from(sigma_mid));
        }
        sigmas.push(0.0);
        let kind = SamplerKind {
            karras,
            ..SamplerKind::DPMPP_2S_A
        };
        Ok(Self {
            schedule: Schedule::with_sigmas(kind, timesteps, sigmas, schedule.init_noise_sigma),
            prediction: config.prediction_type,
            calls,
            first: None,
            host_kept: Vec::new(),
        })
    }
}

impl Sampler for DpmPP2SAncestral {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        let prediction = self.prediction;
        let (prev, up) = match self.calls[step] {
            Call::First {
                sigma,
                ratio,
                expm1,
            } => {
                let x2 = ratio * SAMPLE - expm1 * sigma_denoised(prediction, sigma, SAMPLE, OUTPUT);
                self.first = Some((step, ()));
                return Ok(StepProgram::next(x2).keeping(vec![SAMPLE]));
            }
            Call::Second {
                sigma,
                ratio,
                expm1,
                up,
            } => {
                take_first_call(&mut self.first, self.schedule.kind.name(), step)?;
                // The second call's sample is x_2; the step goes on from the first's x.
                let denoised = sigma_denoised(prediction, sigma, SAMPLE, OUTPUT);
                (ratio * kept(0) - expm1 * denoised, up)
            }
            Call::Euler { sigma, dt, up } => (euler_step(prediction, sigma, dt), up),
        };
        Ok(StepProgram::next(match up {
            Some(up) => add_fresh_noise(prev, up),
            None => prev,
        }))
    }
}
