//! Stable Diffusion without I/O: the pieces that are plain data and arithmetic, shared by the
//! native and the browser builds: diffusers configs ([`config`]), LCM/SDXL UNet inputs
//! ([`conditioning`]), the noise schedules
//! ([`schedule`]) and samplers ([`sampler`]), the seeded noise ([`rng`]), generation
//! parameters ([`params`]), progress events ([`progress`]) and latent previews ([`preview`]).
//!
//! `no_std` + `alloc`: nothing here touches files, the network or the GPU, so the crate builds
//! for `wasm32-unknown-unknown` and is unit-tested on the host. Callers read the bytes and hand
//! them over (for example `config::UNet2DConditionConfig::from_json`).

#![no_std]

extern crate alloc;

pub mod conditioning;
pub mod config;
pub mod params;
pub mod preview;
pub mod progress;
pub mod request;
pub mod rng;
pub mod sampler;
pub mod schedule;
