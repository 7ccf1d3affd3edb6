//! Stable Diffusion's models as compositions of `sd-kernels`: the CLIP text encoder,
//! `UNet2DConditionModel` and `AutoencoderKL`, built from their diffusers `config.json`.
//!
//! [`plan`] is the memory planner: from the configs and an image size it computes every
//! buffer the forward passes need and checks them against the device limits, without a GPU.

pub mod plan;
