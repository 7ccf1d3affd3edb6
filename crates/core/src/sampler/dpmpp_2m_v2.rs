//! DPM++ 2M v2 (`dpm++2mv2`, `dpm++2mv2_karras`): a variant of DPM-Solver++(2M) proposed in
//! AUTOMATIC1111's discussion 8457.
//!
//! Neither diffusers nor k-diffusion has it. The formula follows stable-diffusion.cpp's
//! `sample_dpmpp_2m_v2` (`src/runtime/denoiser.hpp`, which cites that discussion; we could not
//! read the discussion itself), written the k-diffusion way (`sample_dpmpp_2m`), on the
//! schedule of diffusers' `EulerDiscreteScheduler` (its timesteps, sigmas, `init_noise_sigma`
//! and input scaling; with `karras`, Euler's Karras schedule). With `t = -log(sigma)`,
//! `h = t(i+1) - t(i)` and `D` the data prediction:
//!
//! - first step (no history) and the last (to sigma 0): `x = (s(i+1) / s(i)) x - expm1(-h) D`
//!   (DPM-Solver++ 1, i.e. DDIM; at sigma 0 the result is `D`);
//! - otherwise, with `h_last = t(i) - t(i-1)`, `h_min`/`h_max` the smaller/larger of `h` and
//!   `h_last`, `r = h_max / h_min` and `h_d = (h_max + h_min) / 2`:
//!   `D_d = (1 + 1 / (2r)) D - (1 / (2r)) D_prev` and `x = (s(i+1) / s(i)) x - expm1(-h_d) D_d`.
//!
//! The difference to 2M (`r = h_last / h`, `expm1(-h)`) is that the step size of the
//! correction is the mean of the last two and `r >= 1` always. When consecutive steps differ
//! in log-sigma size (every schedule here except evenly spaced log sigmas), `expm1(-h_d)` is
//! not `expm1(-h)`, so a constant `D` is no longer integrated exactly: the method is then only
//! first-order convergent (see `tests/sampler_convergence.rs`); with equal log-sigma steps it
//! is DPM-Solver++(2M). The arithmetic is float32, operation by operation as written above.

use alloc::vec;
use alloc::vec::Vec;

use super::common::{Schedule, SigmaClass, SigmaSchedule};
use super::program::{OUTPUT, SAMPLE, StepProgram, kept};
use super::{Sampler, SamplerError, SamplerKind, check_next, sigma_denoised};
use crate::config::{PredictionType, SchedulerConfig};

/// The DPM++ 2M v2 sampler. It remembers the previous step's data prediction, so steps must
/// be taken in order.
#[derive(Debug, Clone)]
pub struct DpmPP2MV2 {
    schedule: Schedule,
    prediction: PredictionType,
    /// The previous step's index (its data prediction is kept).
    previous: Option<usize>,
    host_kept: Vec<Vec<f32>>,
}

impl DpmPP2MV2 {
    /// The sampler for `steps` steps on Euler's schedule; `karras` selects Euler's Karras
    /// schedule. Spacing defaults to `linspace` when the config has none, as for Euler.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`].
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        let kind = SamplerKind {
            karras,
            ..SamplerKind::DPMPP_2M_V2
        };
        Ok(Self {
            schedule: SigmaSchedule::new(config, steps, karras, SigmaClass::Euler)?
                .into_schedule(kind),
            prediction: config.prediction_type,
            previous: None,
            host_kept: Vec::new(),
        })
    }
}

/// k-diffusion's `t_fn`: `-log(sigma)` in float32 (+inf at sigma 0).
fn t_fn(sigma: f32) -> f32 {
    -libm::logf(sigma)
}

/// k-diffusion's `sigma_fn`: `exp(-t)` in float32.
fn sigma_fn(t: f32) -> f32 {
    libm::expf(-t)
}

impl Sampler for DpmPP2MV2 {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        check_next(self.schedule.kind.name(), self.previous, step)?;
        let sigma = self.schedule.sigma(step);
        let sigma_next = self.schedule.sigma(step + 1);
        let denoised = sigma_denoised(self.prediction, sigma, SAMPLE, OUTPUT);
        let t = t_fn(sigma);
        let t_next = t_fn(sigma_next);
        let h = t_next - t;
        let ratio = sigma_fn(t_next) / sigma_fn(t);
        // The previous step's data prediction is kept buffer 0.
        let prev = match self.previous {
            Some(_) if sigma_next != 0.0 => {
                let h_last = t - t_fn(self.schedule.sigma(step - 1));
                let h_min = h_last.min(h);
                let h_max = h_last.max(h);
                let r = h_max / h_min;
                let h_d = (h_max + h_min) / 2.0;
                let expm1 = libm::expm1f(-h_d);
                let (c_new, c_old) = (1.0 + 1.0 / (2.0 * r), 1.0 / (2.0 * r));
                ratio * SAMPLE - expm1 * (c_new * denoised.clone() - c_old * kept(0))
            }
            _ => {
                let expm1 = libm::expm1f(-h);
                ratio * SAMPLE - expm1 * denoised.clone()
            }
        };
        self.previous = Some(step);
        Ok(StepProgram::next(prev).keeping(vec![denoised]))
    }
}
