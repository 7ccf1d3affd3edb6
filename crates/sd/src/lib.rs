//! Stable Diffusion on WGSL compute shaders: load a model, generate images.
//!
//! This crate is the one way in: the `sd` command line, the local HTTP server and the browser
//! package all generate through it. The models run as hand-written WGSL compute shaders over
//! [wgpu](https://wgpu.rs) (Vulkan, Metal, DX12, WebGPU), exact to diffusers' numbers.
//!
//! ```
//! use sd_wgsl::{Model, Options};
//!
//! // A preset name, a model folder, or a name under $DIFFUSION_MODELS_PATH / $MODELS_PATH.
//! // "digits" is built in: a tiny model of coloured digits, 64x64.
//! let model = Model::load("digits")?;
//! let options = Options::new().steps(4).guidance_scale(5.0).seed(7).sampler("euler");
//! let images = model.generate("a red digit seven on a blue background", &options)?;
//! let picture: &image::RgbImage = &images.images()[0];
//! assert_eq!(picture.dimensions(), (64, 64));
//! let png: Vec<u8> = images.encode(0, sd_wgsl::ImageFormat::Png)?;
//! assert!(png.starts_with(b"\x89PNG"));
//! # Ok::<(), sd_wgsl::Error>(())
//! ```
//!
//! - [`Model`]: [`Model::load`] by preset, path or name ([`resolve`] says how a name is found,
//!   [`list_models`] what is there); [`Model::generate`], or [`Model::generate_with`] with a
//!   progress callback and a [`CancelToken`]; [`Model::generate_async`] for async code.
//! - [`Options`]: a builder for everything but the prompt (size, steps, guidance, negative
//!   prompt, seed, sampler, count; an input image with strength for img2img, and a mask for
//!   inpainting), checked when the generation starts with [`Error::InvalidOption`] naming the
//!   option.
//! - [`Images`]: the pictures as [`image::RgbImage`], encoded as PNG (with the parameters in
//!   an A1111-style text chunk), JPEG or WebP, or written to files.
//!
//! [`Model`] is `Send + Sync`: share it in an `Arc` between threads. Generation keeps a GPU
//! busy, so under an async runtime run it on a blocking thread:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use sd_wgsl::{Model, Options};
//!
//! let model = Arc::new(tokio::task::spawn_blocking(|| Model::load("digits")).await??);
//! let worker = Arc::clone(&model);
//! let images = tokio::task::spawn_blocking(move || {
//!     worker.generate("a white digit three on a black background", &Options::new().steps(2))
//! })
//! .await??;
//! assert_eq!(images.len(), 1);
//! # Ok(())
//! # }
//! ```

#[cfg(not(target_arch = "wasm32"))]
mod device;
mod embedded;
mod error;
#[cfg(not(target_arch = "wasm32"))]
mod hub;
mod model;
mod options;
mod output;
mod progress;
#[cfg(not(target_arch = "wasm32"))]
mod resolve;

#[cfg(not(target_arch = "wasm32"))]
pub use device::Device;
pub use error::{Error, Result};
#[cfg(all(feature = "hub", not(target_arch = "wasm32")))]
pub use hub::download_preset;
#[cfg(not(target_arch = "wasm32"))]
pub use hub::{DownloadProgress, HubConfig, HubRepo, cached_preset, is_downloaded, missing_files};
pub use model::{LoadOptions, Model};
pub use options::Options;
pub use output::{ImageFormat, Images};
pub use progress::{CancelToken, Progress};
#[cfg(not(target_arch = "wasm32"))]
pub use resolve::{
    Distilled, LocalModel, ModelLocation, ModelPaths, PRESETS, Preset, list_models,
    list_models_with, resolve,
};

/// The image crate this API speaks ([`image::RgbImage`] in and out).
pub use image;
pub use sd_core::params::{GenerationParams, ModelDefaults};
pub use sd_core::progress::Stage;
pub use sd_core::sampler::{Algorithm, SamplerKind};
/// The lower layers, for what the front door does not cover (parity tests, benchmarks).
pub use sd_models::DeviceKind;
pub use {sd_core as core, sd_kernels as kernels, sd_models as models};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn the_public_types_cross_threads() {
        send_sync::<Model>();
        send_sync::<Options>();
        send_sync::<Images>();
        send_sync::<CancelToken>();
        send_sync::<Error>();
    }
}
