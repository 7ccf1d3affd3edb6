//! `scheduler/scheduler_config.json`: the keys that diffusers' noise schedulers
//! (`diffusers/schedulers/scheduling_*.py`) share, plus the few that one family needs.
//!
//! Deserialisation only: the schedule arithmetic lives with the schedulers. Keys whose
//! default differs between scheduler classes (`timestep_spacing`, `clip_sample`,
//! `set_alpha_to_one`, ...) are `Option`s here, so the scheduler that reads them applies its
//! own class default.

use alloc::string::String;
use alloc::vec::Vec;

use serde::Deserialize;

use super::{ConfigError, json};

/// How betas run from `beta_start` to `beta_end` (`beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BetaSchedule {
    /// `linear`: evenly spaced betas.
    #[serde(rename = "linear")]
    Linear,
    /// `scaled_linear`: evenly spaced square roots of the betas (SD).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// `squaredcos_cap_v2`: the cosine schedule of Nichol & Dhariwal, betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the UNet predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PredictionType {
    /// `epsilon`: the noise (SD 1.x, SD 2 base, SDXL).
    #[serde(rename = "epsilon")]
    Epsilon,
    /// `v_prediction`: the velocity `alpha_t * noise - sigma_t * x0` (SD 2.x 768).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// `sample`: the clean sample directly.
    #[serde(rename = "sample")]
    Sample,
}

/// How inference timesteps are placed among the training timesteps (`timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TimestepSpacing {
    /// `leading`: `0, k, 2k, ...` plus `steps_offset` (SD 1.x's PNDM and DDIM).
    #[serde(rename = "leading")]
    Leading,
    /// `trailing`: counted back from the last training timestep (SD-Turbo).
    #[serde(rename = "trailing")]
    Trailing,
    /// `linspace`: evenly spaced over the whole range, first and last included.
    #[serde(rename = "linspace")]
    Linspace,
}

/// A scheduler's configuration.
///
/// Required keys: `_class_name`, `num_train_timesteps`, `beta_start`, `beta_end` and
/// `beta_schedule` (every scheduler config of an SD checkpoint carries them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    /// `_class_name`: the diffusers scheduler class the checkpoint ships with, e.g.
    /// `PNDMScheduler`, `EulerDiscreteScheduler`, `DDIMScheduler`, `LCMScheduler`.
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// `num_train_timesteps`: the number of diffusion steps in training (1000).
    pub num_train_timesteps: usize,
    /// `beta_start`: the first beta (SD: 0.00085).
    pub beta_start: f64,
    /// `beta_end`: the last beta (SD: 0.012).
    pub beta_end: f64,
    /// `beta_schedule`: how betas go from `beta_start` to `beta_end`.
    pub beta_schedule: BetaSchedule,
    /// `trained_betas`: explicit betas that replace the schedule (default none).
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// `prediction_type`: what the UNet predicts (default `epsilon`).
    #[serde(default = "default_prediction_type")]
    pub prediction_type: PredictionType,
    /// `timestep_spacing`: timestep placement; `None` when absent (the default is the
    /// scheduler class's: `leading` for DDIM/PNDM/LCM, `linspace` for Euler and DPM-Solver).
    #[serde(default)]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// `steps_offset`: added to `leading` timesteps (default 0; SD 1.x: 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// `clip_sample`: whether DDIM/DDPM/LCM clip the predicted clean sample to
    /// `[-clip_sample_range, clip_sample_range]`; `None` when absent (class default: true).
    #[serde(default)]
    pub clip_sample: Option<bool>,
    /// `clip_sample_range`: that range (default none; class default 1.0).
    #[serde(default)]
    pub clip_sample_range: Option<f64>,
    /// `set_alpha_to_one`: whether DDIM/PNDM/LCM use alpha 1 before the first timestep (true)
    /// or `alphas_cumprod[0]` (false); `None` when absent.
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    /// `skip_prk_steps`: whether PNDM skips its Runge-Kutta warm-up (default none; SD: true).
    #[serde(default)]
    pub skip_prk_steps: Option<bool>,
    /// `use_karras_sigmas`: whether sigma-based schedulers use the Karras et al. noise levels
    /// (default none, i.e. false).
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    /// `rescale_betas_zero_snr`: whether betas are rescaled to zero terminal SNR (default
    /// none, i.e. false).
    #[serde(default)]
    pub rescale_betas_zero_snr: Option<bool>,
    /// `original_inference_steps`: LCM's distillation step count, from which its timesteps
    /// are taken (default none; LCM: 50).
    #[serde(default)]
    pub original_inference_steps: Option<usize>,
    /// `timestep_scaling`: LCM's scale of the timestep in its boundary conditions (default
    /// none; LCM: 10).
    #[serde(default)]
    pub timestep_scaling: Option<f64>,
}

impl SchedulerConfig {
    /// Parses `scheduler/scheduler_config.json`; `file` labels the file in errors.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad JSON, a missing required key, a wrongly typed value or
    /// an unknown `beta_schedule`, `prediction_type` or `timestep_spacing`.
    pub fn from_json(file: &str, json: &str) -> Result<Self, ConfigError> {
        json::from_json(file, json)
    }
}

fn default_prediction_type() -> PredictionType {
    PredictionType::Epsilon
}
