//! Euler (`euler`, `euler_karras`): Karras et al.'s Euler method on the probability-flow ODE.
//!
//! Mirrors `EulerDiscreteScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_euler_discrete.py`) with its defaults for the keys our
//! config does not parse (`interpolation_type: linear`, `final_sigmas_type: zero`,
//! `timestep_type: discrete`, no `sigma_min`/`sigma_max`) and `s_churn` 0 (the pipelines'
//! default), so the step is deterministic.

use alloc::vec::Vec;

use super::common::{Schedule, SigmaClass, SigmaSchedule, euler_step};
use super::{Sampler, SamplerError, SamplerKind, StepProgram};
use crate::config::{PredictionType, SchedulerConfig};

/// The Euler sampler.
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    schedule: Schedule,
    prediction: PredictionType,
    host_kept: Vec<Vec<f32>>,
}

impl EulerDiscrete {
    /// The sampler for `steps` steps; `karras` selects Karras sigmas (`use_karras_sigmas`).
    /// Spacing defaults to `linspace` when the config has none.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`].
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        let kind = SamplerKind {
            karras,
            ..SamplerKind::EULER
        };
        Ok(Self {
            schedule: SigmaSchedule::new(config, steps, karras, SigmaClass::Euler)?
                .into_schedule(kind),
            prediction: config.prediction_type,
            host_kept: Vec::new(),
        })
    }
}

impl Sampler for EulerDiscrete {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        // s_churn = 0: gamma = 0 and sigma_hat = sigma.
        let sigma = self.schedule.sigma(step);
        let dt = self.schedule.sigma(step + 1) - sigma;
        Ok(StepProgram::next(euler_step(self.prediction, sigma, dt)))
    }
}
