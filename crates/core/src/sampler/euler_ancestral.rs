//! Euler ancestral (`euler_a`, `euler_a_karras`): an Euler step down to `sigma_down`, then
//! fresh noise of standard deviation `sigma_up`, so that the result has the next step's noise
//! level.
//!
//! Mirrors `EulerAncestralDiscreteScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_euler_ancestral_discrete.py`); like diffusers it rejects
//! `prediction_type: sample`. diffusers offers no Karras sigmas for it (and ignores
//! `use_karras_sigmas` in the config); `euler_a_karras` runs the same step on the Karras
//! schedule of [`super::EulerDiscrete`] (timesteps, sigmas and `init_noise_sigma` as
//! `EulerDiscreteScheduler` with `use_karras_sigmas`), which is k-diffusion's
//! `sample_euler_ancestral` on Karras sigmas.

use alloc::vec::Vec;

use super::common::{
    Schedule, SigmaClass, SigmaSchedule, add_fresh_noise, euler_step, sigma_down, sigma_up,
};
use super::{Sampler, SamplerError, SamplerKind, StepProgram, refuse_sample_prediction};
use crate::config::{PredictionType, SchedulerConfig};

/// The Euler ancestral sampler.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    schedule: Schedule,
    prediction: PredictionType,
    host_kept: Vec<Vec<f32>>,
}

impl EulerAncestral {
    /// The sampler for `steps` steps; `karras` selects Euler's Karras schedule. Spacing
    /// defaults to `linspace` when the config has none.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`], and [`SamplerError::UnsupportedPrediction`] for
    /// `prediction_type: sample`.
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        refuse_sample_prediction(config, SamplerKind::EULER_A.name())?;
        let kind = SamplerKind {
            karras,
            ..SamplerKind::EULER_A
        };
        Ok(Self {
            schedule: SigmaSchedule::new(config, steps, karras, SigmaClass::Euler)?
                .into_schedule(kind),
            prediction: config.prediction_type,
            host_kept: Vec::new(),
        })
    }
}

impl Sampler for EulerAncestral {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        let sigma = self.schedule.sigma(step);
        let sigma_to = self.schedule.sigma(step + 1);
        // Each operation in float32 as in diffusers.
        let up = sigma_up(sigma, sigma_to);
        let dt = sigma_down(sigma, sigma_to, up) - sigma;
        // `sample` prediction is refused in `new`.
        let prev = euler_step(self.prediction, sigma, dt);
        Ok(StepProgram::next(add_fresh_noise(prev, up)))
    }
}
