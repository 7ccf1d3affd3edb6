//! The networks, each written once against the [`Recorder`](crate::record::Recorder)
//! interface, block by block as diffusers and transformers name them: the GPU executor, the
//! memory planner and the cost model all run these walks.

use crate::backend::NetworkConfigs;
use crate::plan::PlanError;

pub mod blocks;
pub mod clip;
pub mod unet;
pub mod vae;

/// The one check of a model's configs: every module the walks need is one they implement.
/// Loading runs it before any weight is read, whichever backend runs the networks.
///
/// # Errors
///
/// [`PlanError::Unsupported`] naming the setting, [`PlanError::Architecture`] for settings that
/// do not fit together.
pub fn check_supported(configs: &NetworkConfigs<'_>) -> Result<(), PlanError> {
    unet::check_supported(configs.unet)?;
    vae::check_supported(configs.vae)
}
