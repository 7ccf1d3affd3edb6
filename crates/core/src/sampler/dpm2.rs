//! DPM2 (`dpm2`, `dpm2_karras`): k-diffusion's DPM-Solver-2 (`sample_dpm_2`): an Euler step
//! to the geometric midpoint of two sigmas, the model there, and the full step with the
//! midpoint's derivative.
//!
//! Mirrors `KDPM2DiscreteScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_k_dpm_2_discrete.py`) with its defaults for the keys our
//! config does not parse (no exponential or beta sigmas). It has no `rescale_betas_zero_snr`,
//! no clipping, and no `sample` prediction (refused, as diffusers raises). With the sigmas
//! `S = [s0, ..., s(n-1), 0]` (float32) and the midpoints `m(i) = exp(lerp(log S(i),
//! log S(i-1), 0.5))` (torch's float32 `log`, `lerp`, `exp`; `m(n) = 0`), the model calls are
//!
//! - call `2i` at `S(i)` (timestep `t(i)`): `x_mid = x + (x - x0) / S(i) * (m(i+1) - S(i))`;
//! - call `2i + 1` at `m(i+1)` (timestep `sigma_to_t(m(i+1))`): `x_next = x + (x_mid -
//!   x0_mid) / m(i+1) * (S(i+1) - S(i))` from the first call's `x`;
//!
//! and the last call `2n - 2`, whose midpoint is 0, is an Euler step to 0. `sigmas()` are
//! diffusers' `[S0, S1, S1, ..., S(n-1), S(n-1), 0, 0, 0]`; the midpoint sigmas (the model's
//! at odd calls) are kept separately, as diffusers' `sigmas_interpol`.

use alloc::vec::Vec;

use super::euler::{self, SigmaSchedule};
use super::{
    Sampler, SamplerError, SamplerKind, check_len, check_step, plain_alphas_cumprod,
    refuse_sample_prediction, sigma_denoised, sqrt_sigma_sq_plus_one,
};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule;

/// The DPM2 sampler.
#[derive(Debug, Clone)]
pub struct KDpm2 {
    karras: bool,
    prediction: PredictionType,
    timesteps: Vec<f64>,
    /// diffusers' `sigmas`: `[S0, S1, S1, ..., S(n), S(n), S(n)]` (`S(n) = 0`).
    sigmas: Vec<f64>,
    /// diffusers' `sigmas_interpol`, interleaved the same way.
    sigmas_interpol: Vec<f32>,
    init_noise_sigma: f64,
    /// The first call of the current step: its index and sample.
    first: Option<(usize, Vec<f32>)>,
}

/// `[x0, x1, x1, x2, x2, ..., xn, xn, xn]`: diffusers' `torch.cat([x[:1],
/// x[1:].repeat_interleave(2), x[-1:]])`.
pub(super) fn interleave<T: Copy>(values: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(2 * values.len());
    if let (Some(&first), Some(&last)) = (values.first(), values.last()) {
        out.push(first);
        for &v in &values[1..] {
            out.extend([v, v]);
        }
        out.push(last);
    }
    out
}

/// torch's `start.lerp(end, 0.5)` in float32 (weight 0.5 is not "small", so torch computes
/// `end - (end - start) * 0.5`).
pub(super) fn lerp_half(start: f32, end: f32) -> f32 {
    end - (end - start) * 0.5
}

/// The midpoint timesteps of DPM2 and DPM2 ancestral: diffusers' `_sigma_to_t` of each float32
/// midpoint sigma, which runs in float32 there ([`schedule::sigma_to_t_f32`]); exact in the
/// float32 (spaced) and float64 (Karras) timestep tensors alike.
pub(super) fn midpoint_timestep(sigma: f32, log_sigmas: &[f32]) -> f64 {
    f64::from(schedule::sigma_to_t_f32(sigma, log_sigmas))
}

impl KDpm2 {
    /// The sampler for `steps` steps (`2 * steps - 1` model calls); `karras` selects Karras
    /// sigmas (`use_karras_sigmas`; the Karras timesteps are then rounded to whole numbers, as
    /// diffusers' KDPM2 does). Spacing defaults to `linspace` when the config has none.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`] and [`SamplerError::UnsupportedPrediction`] for `sample`.
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        refuse_sample_prediction(config, SamplerKind::DPM2.name())?;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let acp = plain_alphas_cumprod(config)?;
        let schedule = SigmaSchedule::new(&acp, config, spacing, steps, karras, libm::rint)?;
        let s: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        // sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp(): m(i) between S(i) and S(i-1).
        // m(0) (rolled against S(n) = 0) is NaN in diffusers and never used.
        let interpol: Vec<f32> = (0..s.len())
            .map(|i| match i {
                0 => f32::NAN,
                _ => libm::expf(lerp_half(libm::logf(s[i]), libm::logf(s[i - 1]))),
            })
            .collect();
        let log_sigmas: Vec<f32> = schedule.log_sigmas.iter().map(|&l| l as f32).collect();
        // timesteps: [t0, m_t(1), t1, m_t(2), t2, ..., m_t(n-1), t(n-1)].
        let t = &schedule.timesteps;
        let mut timesteps = Vec::with_capacity(2 * steps - 1);
        timesteps.push(t[0]);
        for i in 1..steps {
            timesteps.push(midpoint_timestep(interpol[i], &log_sigmas));
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
            init_noise_sigma,
            first: None,
        })
    }
}

impl Sampler for KDpm2 {
    fn kind(&self) -> SamplerKind {
        if self.karras {
            SamplerKind::DPM2_KARRAS
        } else {
            SamplerKind::DPM2
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
            self.sigmas_interpol[step]
        };
        Ok(sqrt_sigma_sq_plus_one(sigma))
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
        let prediction = self.prediction;
        if step.is_multiple_of(2) {
            // First order: an Euler step from sigma to the midpoint sigma_interpol.
            let sigma = self.sigmas[step] as f32;
            let sigma_interpol = self.sigmas_interpol[step + 1];
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
        // DPM-Solver-2: the midpoint's derivative over the whole step, from the first sample.
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
        let sigma = self.sigmas[step - 1] as f32;
        let sigma_interpol = self.sigmas_interpol[step];
        let sigma_next = self.sigmas[step] as f32;
        let dt = sigma_next - sigma;
        Ok(sample
            .iter()
            .zip(model_output)
            .zip(&first)
            .map(|((&x, &m), &x1)| {
                let derivative =
                    (x - sigma_denoised(prediction, sigma_interpol, x, m)) / sigma_interpol;
                x1 + derivative * dt
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
