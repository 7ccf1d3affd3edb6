//! Euler (`euler`, `euler_karras`): Karras et al.'s Euler method on the probability-flow ODE.
//!
//! Mirrors `EulerDiscreteScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_euler_discrete.py`) with its defaults for the keys our
//! config does not parse (`interpolation_type: linear`, `final_sigmas_type: zero`,
//! `timestep_type: discrete`, no `sigma_min`/`sigma_max`) and `s_churn` 0 (the pipelines'
//! default), so the step is deterministic.

use alloc::vec::Vec;

use super::common::{Schedule, SigmaClass, SigmaSchedule, euler_step};
use super::{Sampler, SamplerError, SamplerKind};
use crate::config::{PredictionType, SchedulerConfig};

/// The Euler sampler.
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    schedule: Schedule,
    prediction: PredictionType,
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
        })
    }
}

impl Sampler for EulerDiscrete {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        _noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError> {
        self.schedule
            .check_step_inputs(step, sample, model_output)?;
        // s_churn = 0: gamma = 0 and sigma_hat = sigma.
        let sigma = self.schedule.sigma(step);
        let dt = self.schedule.sigma(step + 1) - sigma;
        Ok(euler_step(self.prediction, sigma, dt, sample, model_output))
    }
}
