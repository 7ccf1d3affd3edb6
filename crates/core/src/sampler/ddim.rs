//! DDIM (`ddim`): Song et al.'s denoising diffusion implicit models, with `eta` for the
//! stochastic variant.
//!
//! Mirrors `DDIMScheduler` of diffusers 0.42 (`diffusers/schedulers/scheduling_ddim.py`) with
//! its defaults for keys the config lacks (`timestep_spacing: leading`, `clip_sample: true`,
//! `clip_sample_range: 1.0`, `set_alpha_to_one: true`; `thresholding: false`), and
//! `use_clipped_model_output: false` as the pipelines call it. No Karras sigmas (diffusers has
//! none for DDIM).

use alloc::vec::Vec;

use super::common::{
    Schedule, add_fresh_noise, check_training_range, clip_range, final_alpha_cumprod,
    whole_timesteps,
};
use super::program::{OUTPUT, SAMPLE, StepProgram};
use super::{Sampler, SamplerError, SamplerKind};
use crate::config::{PredictionType, SchedulerConfig};
use crate::schedule;

/// The DDIM sampler.
#[derive(Debug, Clone)]
pub struct Ddim {
    schedule: Schedule,
    prediction: PredictionType,
    eta: f64,
    /// `Some(range)` when `clip_sample` is on.
    clip: Option<f32>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    /// `num_train_timesteps // steps`: how far back the previous timestep is.
    step_ratio: usize,
    host_kept: Vec<Vec<f32>>,
}

impl Ddim {
    /// The sampler for `steps` steps with noise weight `eta` (0: deterministic DDIM).
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`], [`SamplerError::BadEta`] and
    /// [`SamplerError::TimestepOutOfRange`].
    pub fn new(config: &SchedulerConfig, steps: usize, eta: f64) -> Result<Self, SamplerError> {
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(SamplerError::BadEta(eta));
        }
        let alphas_cumprod = schedule::alphas_cumprod(config)?;
        let num_train = config.num_train_timesteps;
        let timesteps = whole_timesteps(config, steps)?;
        check_training_range(&timesteps, num_train)?;
        Ok(Self {
            schedule: Schedule::without_sigmas(SamplerKind::DDIM, timesteps, &alphas_cumprod),
            prediction: config.prediction_type,
            eta,
            clip: clip_range(config, true),
            final_alpha_cumprod: final_alpha_cumprod(config, true, &alphas_cumprod),
            alphas_cumprod,
            step_ratio: num_train / steps,
            host_kept: Vec::new(),
        })
    }

    /// `alphas_cumprod` at the step's timestep and at the previous timestep (`t - T // steps`,
    /// or the final value before the first training timestep).
    fn alphas(&self, step: usize) -> (f32, f32) {
        let t = self.schedule.timesteps[step] as usize;
        let alpha_prod_t = self.alphas_cumprod[t] as f32;
        let alpha_prod_prev = match t.checked_sub(self.step_ratio) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        } as f32;
        (alpha_prod_t, alpha_prod_prev)
    }
}

impl Sampler for Ddim {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        let (alpha_prod_t, alpha_prod_prev) = self.alphas(step);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let sqrt_alpha = libm::sqrtf(alpha_prod_t);
        let sqrt_beta = libm::sqrtf(beta_prod_t);
        let beta_prod_prev = 1.0 - alpha_prod_prev;
        let variance = (beta_prod_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_prev);
        let std_dev = self.eta as f32 * libm::sqrtf(variance);
        let direction_coef = libm::sqrtf(1.0 - alpha_prod_prev - std_dev * std_dev);
        let sqrt_alpha_prev = libm::sqrtf(alpha_prod_prev);
        let (mut x0, eps) = match self.prediction {
            PredictionType::Epsilon => ((SAMPLE - sqrt_beta * OUTPUT) / sqrt_alpha, OUTPUT),
            PredictionType::Sample => (OUTPUT, (SAMPLE - sqrt_alpha * OUTPUT) / sqrt_beta),
            PredictionType::VPrediction => (
                sqrt_alpha * SAMPLE - sqrt_beta * OUTPUT,
                sqrt_alpha * OUTPUT + sqrt_beta * SAMPLE,
            ),
        };
        if let Some(range) = self.clip {
            x0 = x0.clamp(range);
        }
        let prev = sqrt_alpha_prev * x0 + direction_coef * eps;
        Ok(StepProgram::next(if self.eta > 0.0 {
            add_fresh_noise(prev, std_dev)
        } else {
            prev
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BetaSchedule, TimestepSpacing};

    fn config(prediction: PredictionType) -> SchedulerConfig {
        SchedulerConfig {
            class_name: "DDIMScheduler".into(),
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            prediction_type: prediction,
            timestep_spacing: Some(TimestepSpacing::Leading),
            steps_offset: 1,
            clip_sample: Some(false),
            clip_sample_range: None,
            set_alpha_to_one: Some(false),
            skip_prk_steps: None,
            use_karras_sigmas: None,
            rescale_betas_zero_snr: None,
            original_inference_steps: None,
            timestep_scaling: None,
        }
    }

    /// A step computed by hand (in f64) from the DDIM formulas: v-prediction, eta 0.5, with
    /// the noise term.
    #[test]
    fn v_prediction_with_eta_by_hand() -> Result<(), SamplerError> {
        let config = config(PredictionType::VPrediction);
        let mut ddim = Ddim::new(&config, 10, 0.5)?;
        let acp = schedule::alphas_cumprod(&config)?;
        let step = 3;
        let t = ddim.timesteps()[step] as usize;
        assert_eq!(t, 601);
        let (a, a_prev) = (acp[t], acp[t - 100]);
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let x = [0.7_f32, -1.3];
        let v = [0.2_f32, 0.9];
        let z = [1.5_f32, -0.25];
        let variance = (b_prev / b) * (1.0 - a / a_prev);
        let std = 0.5 * libm::sqrt(variance);
        let expected: Vec<f64> = (0..2)
            .map(|i| {
                let (x, v, z) = (f64::from(x[i]), f64::from(v[i]), f64::from(z[i]));
                let x0 = libm::sqrt(a) * x - libm::sqrt(b) * v;
                let eps = libm::sqrt(a) * v + libm::sqrt(b) * x;
                libm::sqrt(a_prev) * x0 + libm::sqrt(1.0 - a_prev - std * std) * eps + std * z
            })
            .collect();
        let mut draws = 0;
        let prev = ddim.step(&v, step, &x, &mut |n| {
            draws += 1;
            z[..n].to_vec()
        })?;
        assert_eq!(draws, 1);
        for (p, e) in prev.iter().zip(&expected) {
            assert!((f64::from(*p) - e).abs() < 1e-6, "{p} vs {e}");
        }
        Ok(())
    }

    /// At eta 0 no noise is drawn; the last step goes to `alphas_cumprod[0]` (set_alpha_to_one
    /// false) and with epsilon prediction recovers x0 exactly when the model is right.
    #[test]
    fn eta_zero_draws_nothing() -> Result<(), SamplerError> {
        let config = config(PredictionType::Epsilon);
        let mut ddim = Ddim::new(&config, 20, 0.0)?;
        let prev = ddim.step(&[0.5], 19, &[1.0], &mut |_| unreachable_noise())?;
        let acp = schedule::alphas_cumprod(&config)?;
        let (a, a_prev) = (acp[1], acp[0]);
        let x0 = (1.0 - libm::sqrt(1.0 - a) * 0.5) / libm::sqrt(a);
        let expected = libm::sqrt(a_prev) * x0 + libm::sqrt(1.0 - a_prev) * 0.5;
        assert!((f64::from(prev[0]) - expected).abs() < 1e-6);
        Ok(())
    }

    fn unreachable_noise() -> Vec<f32> {
        Vec::new()
    }

    #[test]
    fn bad_eta() {
        let config = config(PredictionType::Epsilon);
        assert_eq!(
            Ddim::new(&config, 20, f64::NAN)
                .err()
                .map(|e| matches!(e, SamplerError::BadEta(_))),
            Some(true)
        );
    }
}
