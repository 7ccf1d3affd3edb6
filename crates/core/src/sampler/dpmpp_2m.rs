//! DPM-Solver++ 2M (`dpm++2m`, `dpm++2m_karras`): Lu et al.'s second-order multistep solver
//! in data-prediction form.
//!
//! Mirrors `DPMSolverMultistepScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_dpmsolver_multistep.py`) with `algorithm_type:
//! dpmsolver++`, `solver_order: 2`, `solver_type: midpoint`, `lower_order_final: true`,
//! `euler_at_final: false`, `final_sigmas_type: zero`, `lambda_min_clipped: -inf` and no
//! thresholding. So the first step (no history yet) and the last (sigma 0) are first order,
//! every other step second order from this step's and the previous step's data predictions.

use alloc::vec;
use alloc::vec::Vec;

use super::common::{Schedule, alpha_sigma};
use super::program::{OUTPUT, SAMPLE, StepProgram, kept};
use super::{Sampler, SamplerError, SamplerKind, check_next, sigma_alphas_cumprod};
use crate::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule::{self, round_f32};

/// The DPM-Solver++ 2M sampler. It remembers the previous step's data prediction, so steps
/// must be taken in order.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    schedule: Schedule,
    prediction: PredictionType,
    /// The previous step's index (its data prediction x0 is kept).
    previous: Option<usize>,
    host_kept: Vec<Vec<f32>>,
}

impl DpmSolverMultistep {
    /// The sampler for `steps` steps; `karras` selects Karras sigmas (`use_karras_sigmas`).
    /// Spacing defaults to `linspace` when the config has none.
    ///
    /// Timesteps are whole numbers (diffusers keeps them as int64): the spaced ones
    /// ([`schedule::timesteps_dpm_solver`]) with sigmas read off the training sigmas, or with
    /// `karras` the Karras sigmas over the whole training range, mapped back to timesteps by
    /// [`schedule::sigma_to_t`] and rounded (truncated for `squaredcos_cap_v2`, as diffusers
    /// skips the rounding there and casts to int64).
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`].
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self, SamplerError> {
        let acp = sigma_alphas_cumprod(config)?;
        let table = schedule::train_sigmas(&acp);
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let mut timesteps = schedule::timesteps_dpm_solver(
            spacing,
            config.num_train_timesteps,
            steps,
            config.steps_offset,
        )?;
        let mut sigmas: Vec<f64>;
        if karras {
            let (Some(&sigma_min), Some(&sigma_max)) = (table.first(), table.last()) else {
                return Err(schedule::ScheduleError::NoSteps.into());
            };
            let log_sigmas = schedule::log_sigmas(&table);
            sigmas = schedule::karras_sigmas(sigma_min, sigma_max, steps);
            let whole = if config.beta_schedule == BetaSchedule::SquaredcosCapV2 {
                libm::trunc
            } else {
                libm::rint
            };
            timesteps = sigmas
                .iter()
                .map(|&s| whole(schedule::sigma_to_t(s, &log_sigmas)))
                .collect();
        } else {
            sigmas = timesteps
                .iter()
                .map(|&t| schedule::interp(t, &table))
                .collect();
        }
        sigmas.push(0.0);
        let sigmas = sigmas.into_iter().map(round_f32).collect();
        let kind = SamplerKind {
            karras,
            ..SamplerKind::DPMPP_2M
        };
        Ok(Self {
            schedule: Schedule::dpm_solver(kind, timesteps, sigmas),
            prediction: config.prediction_type,
            previous: None,
            host_kept: Vec::new(),
        })
    }
}

/// `lambda = log(alpha_t) - log(sigma_t)`, in float32 (+inf at sigma 0).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    libm::logf(alpha) - libm::logf(sigma)
}

impl Sampler for DpmSolverMultistep {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        check_next(self.schedule.kind.name(), self.previous, step)?;

        // convert_model_output: the data prediction x0 at this step's sigma.
        let (alpha_s0, sigma_s0) = alpha_sigma(self.schedule.sigma(step));
        let x0 = match self.prediction {
            PredictionType::Epsilon => (SAMPLE - sigma_s0 * OUTPUT) / alpha_s0,
            PredictionType::Sample => OUTPUT,
            PredictionType::VPrediction => alpha_s0 * SAMPLE - sigma_s0 * OUTPUT,
        };

        let (alpha_t, sigma_t) = alpha_sigma(self.schedule.sigma(step + 1));
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let sample_coef = sigma_t / sigma_s0;
        let d0_coef = alpha_t * (libm::expf(-h) - 1.0);
        // lower_order_final: the last step (final sigma 0) is first order. The previous
        // step's x0 is kept buffer 0.
        let prev = match self.previous {
            Some(_) if step + 1 < self.schedule.calls() => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.schedule.sigma(step - 1));
                let lambda_s1 = lambda(alpha_s1, sigma_s1);
                let h_0 = lambda_s0 - lambda_s1;
                let inv_r0 = 1.0 / (h_0 / h);
                let d1_coef = 0.5 * d0_coef;
                let d1 = inv_r0 * (x0.clone() - kept(0));
                sample_coef * SAMPLE - d0_coef * x0.clone() - d1_coef * d1
            }
            _ => sample_coef * SAMPLE - d0_coef * x0.clone(),
        };
        self.previous = Some(step);
        Ok(StepProgram::next(prev).keeping(vec![x0]))
    }
}
