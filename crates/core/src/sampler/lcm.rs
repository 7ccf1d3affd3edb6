//! LCM (`lcm`): the multistep sampling of latent consistency models (Luo et al. 2023): at
//! each step the model's clean-sample estimate, through the consistency boundary condition,
//! is noised afresh to the next timestep.
//!
//! Mirrors `LCMScheduler` of diffusers 0.42 (`diffusers/schedulers/scheduling_lcm.py`) with
//! its defaults for the keys the config lacks (`original_inference_steps: 50`,
//! `timestep_scaling: 10`, `clip_sample: false`, `clip_sample_range: 1`;
//! `thresholding: false`) and `strength` 1 in `set_timesteps` (the img2img pipelines of
//! diffusers other than LCM's own slice the full schedule, as we do). It ignores
//! `timestep_spacing` and `steps_offset`, as diffusers does: the timesteps are taken from the
//! distillation schedule `k - 1, 2k - 1, ..., T - 1` (`k = T // original_inference_steps`),
//! reversed, at the indices `floor(linspace(0, original_inference_steps, steps, endpoint =
//! False))`. A step (float32, in diffusers' order):
//!
//! - `x0` from the model output at `t` (`(x - sqrt(1 - acp) * eps) / sqrt(acp)` for epsilon);
//! - `denoised = c_out * x0 + c_skip * x` with `c_skip = 0.25 / ((10 t)^2 + 0.25)`,
//!   `c_out = 10 t / ((10 t)^2 + 0.25) ** 0.5` (`timestep_scaling` 10, `sigma_data` 0.5);
//! - before the last step: `sqrt(acp_next) * denoised + sqrt(1 - acp_next) * noise` (one
//!   draw); the last step returns `denoised`.

use alloc::vec::Vec;

use super::common::{Schedule, clip_range};
use super::program::{NOISE, OUTPUT, SAMPLE, StepProgram};
use super::{Sampler, SamplerError, SamplerKind};
use crate::config::{PredictionType, SchedulerConfig};
use crate::schedule;

/// The LCM sampler.
#[derive(Debug, Clone)]
pub struct Lcm {
    schedule: Schedule,
    prediction: PredictionType,
    /// `Some(range)` when `clip_sample` is on.
    clip: Option<f32>,
    timestep_scaling: f32,
    alphas_cumprod: Vec<f64>,
    host_kept: Vec<Vec<f32>>,
}

/// `original_inference_steps` when the config has none.
const DEFAULT_ORIGINAL_STEPS: usize = 50;

impl Lcm {
    /// The sampler for `steps` steps.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`] (no steps, more steps than training timesteps, bad betas)
    /// and [`SamplerError::LcmSteps`] for more steps than `original_inference_steps` or an
    /// `original_inference_steps` of 0 or above `num_train_timesteps`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SamplerError> {
        let alphas_cumprod = schedule::alphas_cumprod(config)?;
        let num_train = config.num_train_timesteps;
        let original = config
            .original_inference_steps
            .unwrap_or(DEFAULT_ORIGINAL_STEPS);
        schedule::check_steps(num_train, steps)?;
        if original == 0 || original > num_train || steps > original {
            return Err(SamplerError::LcmSteps {
                steps,
                original_inference_steps: original,
                num_train_timesteps: num_train,
            });
        }
        // lcm_origin_timesteps = [1, ..., original] * k - 1, reversed.
        let k = num_train / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        // np.floor(np.linspace(0, len, num=steps, endpoint=False)): i * (len / steps).
        let step = origin.len() as f64 / steps as f64;
        let timesteps = (0..steps)
            .map(|i| origin[libm::floor(i as f64 * step) as usize] as f64)
            .collect();
        Ok(Self {
            schedule: Schedule::without_sigmas(SamplerKind::LCM, timesteps, &alphas_cumprod),
            prediction: config.prediction_type,
            clip: clip_range(config, false),
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
            alphas_cumprod,
            host_kept: Vec::new(),
        })
    }

    /// The consistency model's boundary scalings `(c_skip, c_out)` at timestep `t`, in float32
    /// like diffusers' tensor arithmetic (`sigma_data = 0.5`).
    fn scalings(&self, t: f32) -> (f32, f32) {
        let scaled = t * self.timestep_scaling;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / libm::sqrtf(scaled * scaled + 0.25);
        (c_skip, c_out)
    }
}

impl Sampler for Lcm {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        let timesteps = &self.schedule.timesteps;
        let t = timesteps[step];
        let prev_t = timesteps.get(step + 1).copied().unwrap_or(t);
        let alpha_prod_t = self.alphas_cumprod[t as usize] as f32;
        let alpha_prod_prev = self.alphas_cumprod[prev_t as usize] as f32;
        let sqrt_alpha = libm::sqrtf(alpha_prod_t);
        let sqrt_beta = libm::sqrtf(1.0 - alpha_prod_t);
        let (c_skip, c_out) = self.scalings(t as f32);
        let mut x0 = match self.prediction {
            PredictionType::Epsilon => (SAMPLE - sqrt_beta * OUTPUT) / sqrt_alpha,
            PredictionType::Sample => OUTPUT,
            PredictionType::VPrediction => sqrt_alpha * SAMPLE - sqrt_beta * OUTPUT,
        };
        if let Some(range) = self.clip {
            x0 = x0.clamp(range);
        }
        let denoised = c_out * x0 + c_skip * SAMPLE;
        if step + 1 == timesteps.len() {
            return Ok(StepProgram::next(denoised));
        }
        let sqrt_alpha_prev = libm::sqrtf(alpha_prod_prev);
        let sqrt_beta_prev = libm::sqrtf(1.0 - alpha_prod_prev);
        Ok(StepProgram::next(
            sqrt_alpha_prev * denoised + sqrt_beta_prev * NOISE,
        ))
    }
}
