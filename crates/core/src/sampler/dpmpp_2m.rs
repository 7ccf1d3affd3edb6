//! DPM-Solver++ 2M (`dpm++2m`, `dpm++2m_karras`): Lu et al.'s second-order multistep solver
//! in data-prediction form.
//!
//! Mirrors `DPMSolverMultistepScheduler` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_dpmsolver_multistep.py`) with `algorithm_type:
//! dpmsolver++`, `solver_order: 2`, `solver_type: midpoint`, `lower_order_final: true`,
//! `euler_at_final: false`, `final_sigmas_type: zero`, `lambda_min_clipped: -inf` and no
//! thresholding. So the first step (no history yet) and the last (sigma 0) are first order,
//! every other step second order from this step's and the previous step's data predictions.

use alloc::vec::Vec;

use super::{
    Sampler, SamplerError, SamplerKind, check_len, check_step, sigma_alphas_cumprod,
    sqrt_sigma_sq_plus_one,
};
use crate::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule::{self, round_f32};

/// The DPM-Solver++ 2M sampler. It remembers the previous step's data prediction, so steps
/// must be taken in order.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    karras: bool,
    prediction: PredictionType,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// The previous step's index and data prediction (x0).
    previous: Option<(usize, Vec<f32>)>,
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
        Ok(Self {
            karras,
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            previous: None,
        })
    }
}

/// `alpha_t = 1 / (sigma ** 2 + 1) ** 0.5` and `sigma_t = sigma * alpha_t`, in float32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / sqrt_sigma_sq_plus_one(sigma);
    (alpha, sigma * alpha)
}

/// `lambda = log(alpha_t) - log(sigma_t)`, in float32 (+inf at sigma 0).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    libm::logf(alpha) - libm::logf(sigma)
}

impl Sampler for DpmSolverMultistep {
    fn kind(&self) -> SamplerKind {
        if self.karras {
            SamplerKind::DPMPP_2M_KARRAS
        } else {
            SamplerKind::DPMPP_2M
        }
    }

    fn order(&self) -> usize {
        1
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn model_input_divisor(&self, step: usize) -> Result<f32, SamplerError> {
        check_step(step, self.timesteps.len())?;
        Ok(1.0)
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        _noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError> {
        let steps = self.timesteps.len();
        check_step(step, steps)?;
        check_len("model_output", sample.len(), model_output.len())?;
        if let Some((previous_step, _)) = &self.previous
            && step != previous_step + 1
        {
            return Err(SamplerError::OutOfOrder {
                sampler: self.kind().name(),
                step,
                expected: previous_step + 1,
            });
        }
        let history = match &self.previous {
            Some((_, previous)) => {
                check_len("model_output", previous.len(), model_output.len())?;
                Some(previous.as_slice())
            }
            None => None,
        };

        // convert_model_output: the data prediction x0 at this step's sigma.
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step] as f32);
        let prediction = self.prediction;
        let x0: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| match prediction {
                PredictionType::Epsilon => (x - sigma_s0 * m) / alpha_s0,
                PredictionType::Sample => m,
                PredictionType::VPrediction => alpha_s0 * x - sigma_s0 * m,
            })
            .collect();

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1] as f32);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let sample_coef = sigma_t / sigma_s0;
        let d0_coef = alpha_t * (libm::expf(-h) - 1.0);
        // lower_order_final: the last step (final sigma 0) is first order.
        let prev = match history {
            Some(m1) if step + 1 < steps => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1] as f32);
                let lambda_s1 = lambda(alpha_s1, sigma_s1);
                let h_0 = lambda_s0 - lambda_s1;
                let inv_r0 = 1.0 / (h_0 / h);
                let d1_coef = 0.5 * d0_coef;
                sample
                    .iter()
                    .zip(&x0)
                    .zip(m1)
                    .map(|((&x, &m0), &m1)| {
                        let d1 = inv_r0 * (m0 - m1);
                        sample_coef * x - d0_coef * m0 - d1_coef * d1
                    })
                    .collect()
            }
            _ => sample
                .iter()
                .zip(&x0)
                .map(|(&x, &m0)| sample_coef * x - d0_coef * m0)
                .collect(),
        };
        self.previous = Some((step, x0));
        Ok(prev)
    }

    fn add_noise(
        &self,
        original: &[f32],
        noise: &[f32],
        step: usize,
    ) -> Result<Vec<f32>, SamplerError> {
        check_step(step, self.timesteps.len())?;
        check_len("noise", original.len(), noise.len())?;
        let (alpha, sigma) = alpha_sigma(self.sigmas[step] as f32);
        Ok(original
            .iter()
            .zip(noise)
            .map(|(&x, &n)| alpha * x + sigma * n)
            .collect())
    }
}
