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

use super::{
    Sampler, SamplerError, SamplerKind, check_len, check_step, draw_noise, euler,
    sqrt_sigma_sq_plus_one,
};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};

/// The Euler ancestral sampler.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    karras: bool,
    prediction: PredictionType,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
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
        if config.prediction_type == PredictionType::Sample {
            return Err(SamplerError::UnsupportedPrediction {
                sampler: SamplerKind::EULER_A.name(),
                prediction: super::prediction_name(config.prediction_type),
            });
        }
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let (timesteps, sigmas) = euler::sigma_schedule(config, spacing, steps, karras)?;
        let init_noise_sigma = euler::init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            karras,
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            init_noise_sigma,
        })
    }
}

impl Sampler for EulerAncestral {
    fn kind(&self) -> SamplerKind {
        if self.karras {
            SamplerKind::EULER_A_KARRAS
        } else {
            SamplerKind::EULER_A
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
        self.init_noise_sigma
    }

    fn model_input_divisor(&self, step: usize) -> Result<f32, SamplerError> {
        check_step(step, self.timesteps.len())?;
        Ok(sqrt_sigma_sq_plus_one(self.sigmas[step] as f32))
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<f32>, SamplerError> {
        check_step(step, self.timesteps.len())?;
        check_len("model_output", sample.len(), model_output.len())?;
        let sigma = self.sigmas[step] as f32;
        let sigma_to = self.sigmas[step + 1] as f32;
        // sigma_up = (to^2 (from^2 - to^2) / from^2) ** 0.5, sigma_down = (to^2 - up^2) ** 0.5,
        // each operation in float32 as in diffusers.
        let sigma_up = libm::sqrtf(
            sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma),
        );
        // Mathematically to^4 / from^2 >= 0; clamp a rounding-negative value instead of a NaN.
        let sigma_down = libm::sqrtf((sigma_to * sigma_to - sigma_up * sigma_up).max(0.0));
        let dt = sigma_down - sigma;
        let c_out = -sigma / sqrt_sigma_sq_plus_one(sigma);
        let c_skip_divisor = sigma * sigma + 1.0;
        let prediction = self.prediction;
        let mut prev: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let denoised = match prediction {
                    PredictionType::VPrediction => m * c_out + x / c_skip_divisor,
                    // `sample` is refused in `new`.
                    PredictionType::Epsilon | PredictionType::Sample => x - sigma * m,
                };
                let derivative = (x - denoised) / sigma;
                x + derivative * dt
            })
            .collect();
        let noise = draw_noise(noise, prev.len())?;
        for (p, n) in prev.iter_mut().zip(&noise) {
            *p += n * sigma_up;
        }
        Ok(prev)
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
