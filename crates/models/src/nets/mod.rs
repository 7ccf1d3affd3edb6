//! The networks, each written once against the [`Recorder`](crate::record::Recorder)
//! interface, block by block as diffusers and transformers name them: the GPU executor, the
//! memory planner and the cost model all run these walks.

pub mod blocks;
pub mod clip;
pub mod unet;
pub mod vae;
