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

use alloc::vec::Vec;

use super::dpm2::{interleave, lerp_half, midpoint_timestep};
use super::euler::{self, SigmaSchedule};
use super::{
    Sampler, SamplerError, SamplerKind, check_len, check_step, draw_noise, plain_alphas_cumprod,
    refuse_sample_prediction, sigma_denoised, sqrt_sigma_sq_plus_one,
};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};

/// The DPM2 ancestral sampler.
#[derive(Debug, Clone)]
pub struct KDpm2Ancestral {
    karras: bool,
    prediction: PredictionType,
    timesteps: Vec<f64>,
    /// diffusers' `sigmas`: `[S0, S1, S1, ..., S(n), S(n), S(n)]` (`S(n) = 0`).
    sigmas: Vec<f64>,
    /// diffusers' `sigmas_interpol`, `sigmas_up` and `sigmas_down`, interleaved the same way.
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    init_noise_sigma: f64,
    /// The first call of the current step: its index and sample.
    first: Option<(usize, Vec<f32>)>,
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
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let acp = plain_alphas_cumprod(config)?;
        let schedule = SigmaSchedule::new(&acp, config, spacing, steps, karras, libm::rint)?;
        let s: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        let n = s.len() - 1;
        let next = |i: usize| if i < n { s[i + 1] } else { 0.0 };
        // sigmas_up is NaN at the final 0 in diffusers (0 / 0); it is never used there.
        let up: Vec<f32> = (0..=n)
            .map(|i| {
                let (from, to) = (s[i], next(i));
                libm::sqrtf(to * to * (from * from - to * to) / (from * from))
            })
            .collect();
        // Mathematically to^4 / from^2 >= 0; clamp a rounding-negative value instead of a NaN.
        let down: Vec<f32> = (0..=n)
            .map(|i| {
                if i == n {
                    0.0
                } else {
                    libm::sqrtf((next(i) * next(i) - up[i] * up[i]).max(0.0))
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
        let log_sigmas: Vec<f32> = schedule.log_sigmas.iter().map(|&l| l as f32).collect();
        // timesteps: [t0, m_t(0), t1, m_t(1), t2, ..., m_t(n-2), t(n-1)].
        let t = &schedule.timesteps;
        let mut timesteps = Vec::with_capacity(2 * steps - 1);
        timesteps.push(t[0]);
        for i in 1..steps {
            timesteps.push(midpoint_timestep(interpol[i - 1], &log_sigmas));
            timesteps.push(t[i]);
        }
        let sigmas = interleave(&schedule.sigmas);
        let init_noise_sigma = euler::init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            karras,
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            sigmas_interpol: interleave(&interpol),
            sigmas_up: interleave(&up),
            sigmas_down: interleave(&down),
            init_noise_sigma,
            first: None,
        })
    }
}

impl Sampler for KDpm2Ancestral {
    fn kind(&self) -> SamplerKind {
        if self.karras {
            SamplerKind::DPM2_A_KARRAS
        } else {
            SamplerKind::DPM2_A
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
        let sigma = if step.is_multiple_of(2) {
            self.sigmas[step] as f32
        } else {
            self.sigmas_interpol[step - 1]
        };
        Ok(sqrt_sigma_sq_plus_one(sigma))
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
        if step.is_multiple_of(2) {
            // First order: an Euler step from sigma to the midpoint sigma_interpol.
            let sigma = self.sigmas[step] as f32;
            let sigma_interpol = self.sigmas_interpol[step];
            let dt = sigma_interpol - sigma;
            let prev = sample
                .iter()
                .zip(model_output)
                .map(|(&x, &m)| {
                    let derivative = (x - sigma_denoised(prediction, sigma, x, m)) / sigma;
                    x + derivative * dt
                })
                .collect();
            self.first = Some((step, sample.to_vec()));
            return Ok(prev);
        }
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
        // DPM-Solver-2 down to sigma_down from the first sample, then the ancestral noise.
        let sigma = self.sigmas[step - 1] as f32;
        let sigma_interpol = self.sigmas_interpol[step - 1];
        let sigma_up = self.sigmas_up[step - 1];
        let sigma_down = self.sigmas_down[step - 1];
        let dt = sigma_down - sigma;
        let mut prev: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .zip(&first)
            .map(|((&x, &m), &x1)| {
                let derivative =
                    (x - sigma_denoised(prediction, sigma_interpol, x, m)) / sigma_interpol;
                x1 + derivative * dt
            })
            .collect();
        let noise = draw_noise(noise, prev.len())?;
        for (p, z) in prev.iter_mut().zip(&noise) {
            *p += z * sigma_up;
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
