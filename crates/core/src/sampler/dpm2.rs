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

use alloc::vec;
use alloc::vec::Vec;

use super::common::{Schedule, SigmaClass, SigmaSchedule, euler_step, take_first_call, to_d};
use super::program::{Expr, OUTPUT, SAMPLE, StepProgram, kept};
use super::{Sampler, SamplerError, SamplerKind, refuse_sample_prediction, sigma_denoised};
use crate::config::{PredictionType, SchedulerConfig};
use crate::schedule;

/// The DPM2 sampler.
#[derive(Debug, Clone)]
pub struct KDpm2 {
    /// Its sigmas are diffusers' `sigmas`: `[S0, S1, S1, ..., S(n), S(n), S(n)]` (`S(n) = 0`).
    schedule: Schedule,
    prediction: PredictionType,
    /// diffusers' `sigmas_interpol`, interleaved the same way.
    sigmas_interpol: Vec<f32>,
    /// The first call of the current step: its index (it keeps its sample).
    first: Option<(usize, ())>,
    host_kept: Vec<Vec<f32>>,
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

/// The model-call timesteps of DPM2 and DPM2 ancestral, `[t0, m_t(1), t1, m_t(2), t2, ...,
/// m_t(n-1), t(n-1)]`, where `m_t(i)` is diffusers' `_sigma_to_t` of the midpoint sigma
/// `midpoints[i - 1]`, which runs in float32 there ([`schedule::sigma_to_t_f32`]); exact in
/// the float32 (spaced) and float64 (Karras) timestep tensors alike.
pub(super) fn call_timesteps(schedule: &SigmaSchedule, midpoints: &[f32]) -> Vec<f64> {
    let log_sigmas: Vec<f32> = schedule.log_sigmas.iter().map(|&l| l as f32).collect();
    let t = &schedule.timesteps;
    let mut timesteps = Vec::with_capacity(2 * t.len() - 1);
    timesteps.push(t[0]);
    for (&timestep, &midpoint) in t[1..].iter().zip(midpoints) {
        timesteps.push(f64::from(schedule::sigma_to_t_f32(midpoint, &log_sigmas)));
        timesteps.push(timestep);
    }
    timesteps
}

/// The sigma of each model call of DPM2 and DPM2 ancestral, which the UNet input is scaled
/// for: `sigmas[call]` at the even calls, `midpoint(call)` at the odd (midpoint) calls.
pub(super) fn input_sigmas(
    sigmas: &[f64],
    calls: usize,
    midpoint: impl Fn(usize) -> f32,
) -> Vec<f32> {
    (0..calls)
        .map(|call| {
            if call.is_multiple_of(2) {
                sigmas[call] as f32
            } else {
                midpoint(call)
            }
        })
        .collect()
}

/// The first call of DPM2 and DPM2 ancestral: an Euler step from `sigma` to the midpoint
/// `sigma_interpol`.
pub(super) fn first_call(prediction: PredictionType, sigma: f32, sigma_interpol: f32) -> Expr {
    euler_step(prediction, sigma, sigma_interpol - sigma)
}

/// The second call of DPM2 and DPM2 ancestral (DPM-Solver-2): the midpoint's derivative over
/// `dt` from the first call's sample (kept buffer 0).
pub(super) fn second_call(prediction: PredictionType, sigma_interpol: f32, dt: f32) -> Expr {
    let denoised = sigma_denoised(prediction, sigma_interpol, SAMPLE, OUTPUT);
    kept(0) + to_d(SAMPLE, denoised, sigma_interpol) * dt
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
        let schedule = SigmaSchedule::new(config, steps, karras, SigmaClass::KDpm2)?;
        let s: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        // sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp(): m(i) between S(i) and S(i-1).
        // m(0) (rolled against S(n) = 0) is NaN in diffusers and never used.
        let interpol: Vec<f32> = (0..s.len())
            .map(|i| match i {
                0 => f32::NAN,
                _ => libm::expf(lerp_half(libm::logf(s[i]), libm::logf(s[i - 1]))),
            })
            .collect();
        let kind = SamplerKind {
            karras,
            ..SamplerKind::DPM2
        };
        let timesteps = call_timesteps(&schedule, &interpol[1..]);
        let sigmas = interleave(&schedule.sigmas);
        let sigmas_interpol = interleave(&interpol);
        let input_sigmas = input_sigmas(&sigmas, timesteps.len(), |call| sigmas_interpol[call]);
        Ok(Self {
            schedule: Schedule::with_sigmas(kind, timesteps, sigmas, schedule.init_noise_sigma)
                .with_input_sigmas(input_sigmas),
            prediction: config.prediction_type,
            sigmas_interpol,
            first: None,
            host_kept: Vec::new(),
        })
    }
}

impl Sampler for KDpm2 {
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
            let sigma_interpol = self.sigmas_interpol[step + 1];
            self.first = Some((step, ()));
            return Ok(
                StepProgram::next(first_call(prediction, sigma, sigma_interpol))
                    .keeping(vec![SAMPLE]),
            );
        }
        // DPM-Solver-2: the midpoint's derivative over the whole step, from the first sample.
        take_first_call(&mut self.first, self.schedule.kind.name(), step)?;
        let sigma = self.schedule.sigma(step - 1);
        let sigma_interpol = self.sigmas_interpol[step];
        let dt = self.schedule.sigma(step) - sigma;
        Ok(StepProgram::next(second_call(
            prediction,
            sigma_interpol,
            dt,
        )))
    }
}
