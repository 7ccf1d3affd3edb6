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

use alloc::vec::Vec;

use super::euler::{self, SigmaSchedule};
use super::{
    Sampler, SamplerError, SamplerKind, check_len, check_step, draw_noise, sigma_alphas_cumprod,
    sigma_denoised, sqrt_sigma_sq_plus_one,
};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule::{self, round_f32};

/// The DPM++ 2S ancestral sampler.
#[derive(Debug, Clone)]
pub struct DpmPP2SAncestral {
    karras: bool,
    prediction: PredictionType,
    timesteps: Vec<f64>,
    /// The sigma of each model call, then 0.
    sigmas: Vec<f64>,
    calls: Vec<Call>,
    init_noise_sigma: f64,
    /// The first call of the current step: its index and sample.
    first: Option<(usize, Vec<f32>)>,
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
    let up = to.min(libm::sqrtf(
        to * to * (from * from - to * to) / (from * from),
    ));
    // Mathematically to^4 / from^2 >= 0; clamp a rounding-negative value instead of a NaN.
    let down = libm::sqrtf((to * to - up * up).max(0.0));
    (down, up)
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
        super::refuse_sample_prediction(config, SamplerKind::DPMPP_2S_A.name())?;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let acp = sigma_alphas_cumprod(config)?;
        let SigmaSchedule {
            timesteps: step_timesteps,
            sigmas: step_sigmas,
            log_sigmas,
        } = SigmaSchedule::new(&acp, config, spacing, steps, karras, round_f32)?;
        let mut calls = Vec::with_capacity(2 * steps);
        let mut timesteps = Vec::with_capacity(2 * steps);
        let mut sigmas = Vec::with_capacity(2 * steps);
        for (i, &timestep) in step_timesteps.iter().enumerate() {
            let sigma = step_sigmas[i] as f32;
            let sigma_next = step_sigmas[i + 1] as f32;
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
                &log_sigmas,
            )));
            sigmas.push(f64::from(sigma_mid));
        }
        sigmas.push(0.0);
        let init_noise_sigma = euler::init_noise_sigma(&step_sigmas, spacing);
        Ok(Self {
            karras,
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            calls,
            init_noise_sigma,
            first: None,
        })
    }
}

impl Sampler for DpmPP2SAncestral {
    fn kind(&self) -> SamplerKind {
        if self.karras {
            SamplerKind::DPMPP_2S_A_KARRAS
        } else {
            SamplerKind::DPMPP_2S_A
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
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError> {
        check_step(step, self.timesteps.len())?;
        check_len("model_output", sample.len(), model_output.len())?;
        let prediction = self.prediction;
        let (mut prev, up): (Vec<f32>, Option<f32>) = match self.calls[step] {
            Call::First {
                sigma,
                ratio,
                expm1,
            } => {
                let x2 = sample
                    .iter()
                    .zip(model_output)
                    .map(|(&x, &m)| ratio * x - expm1 * sigma_denoised(prediction, sigma, x, m))
                    .collect();
                self.first = Some((step, sample.to_vec()));
                return Ok(x2);
            }
            Call::Second {
                sigma,
                ratio,
                expm1,
                up,
            } => {
                let first = match self.first.take() {
                    Some((first_step, first)) if first_step + 1 == step => first,
                    _ => {
                        return Err(SamplerError::OutOfOrder {
                            sampler: self.kind().name(),
                            step,
                            expected: step - 1,
                        });
                    }
                };
                check_len("sample", first.len(), sample.len())?;
                let prev = sample
                    .iter()
                    .zip(model_output)
                    .zip(&first)
                    .map(|((&x2, &m), &x)| {
                        ratio * x - expm1 * sigma_denoised(prediction, sigma, x2, m)
                    })
                    .collect();
                (prev, up)
            }
            Call::Euler { sigma, dt, up } => {
                let prev = sample
                    .iter()
                    .zip(model_output)
                    .map(|(&x, &m)| {
                        let d = (x - sigma_denoised(prediction, sigma, x, m)) / sigma;
                        x + d * dt
                    })
                    .collect();
                (prev, up)
            }
        };
        if let Some(up) = up {
            let noise = draw_noise(noise, prev.len())?;
            for (p, z) in prev.iter_mut().zip(&noise) {
                *p += z * up;
            }
        }
        Ok(prev)
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
