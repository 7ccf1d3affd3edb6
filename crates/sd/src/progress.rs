//! Progress events and cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use image::RgbImage;
use sd_core::params::LATENT_CHANNELS;
use sd_core::preview::latents_to_rgba;
use sd_core::progress::Stage;

/// Where a generation is, as [`crate::Model::generate_with`] reports it: at each stage, and
/// after every denoising step with a preview.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The stage; [`Stage::Diffusion`] carries the step done and the steps in all (model calls:
    /// samplers such as Heun call the model twice a step).
    pub stage: Stage,
    /// The image being worked on, from 0 (images batched together share their steps).
    pub image: u32,
    /// Images in the generation.
    pub count: u32,
    /// Done so far, 0 to 100 (the denoising steps count for 95 % of each image).
    pub percent: f64,
    /// After a denoising step: the latents seen as a small RGB picture (1/8 of the size).
    pub preview: Option<RgbImage>,
}

/// Turns the pipeline's stage and step callbacks into [`Progress`] events.
pub(crate) struct Tracker {
    count: u32,
    image: u32,
    total: usize,
    latent_size: (usize, usize),
}

impl Tracker {
    pub(crate) fn new(count: u32, latent_size: (usize, usize)) -> Self {
        Self {
            count,
            image: 0,
            total: 0,
            latent_size,
        }
    }

    fn event(&self, stage: Stage, preview: Option<RgbImage>) -> Progress {
        let within = match stage {
            Stage::Load | Stage::Encode => 0.0,
            Stage::Diffusion { step, total } => 0.95 * step as f64 / total.max(1) as f64,
            Stage::Decode => 0.95,
            Stage::Done => 1.0,
        };
        let percent = if matches!(stage, Stage::Done) {
            100.0
        } else {
            100.0 * (f64::from(self.image) + within) / f64::from(self.count.max(1))
        };
        Progress {
            stage,
            image: self.image.min(self.count.saturating_sub(1)),
            count: self.count,
            percent,
            preview,
        }
    }

    /// A stage event; `None` for the diffusion steps, which [`Tracker::step`] reports with
    /// their preview.
    pub(crate) fn stage(&mut self, stage: Stage) -> Option<Progress> {
        if let Stage::Diffusion { step, total } = stage {
            self.total = total;
            if step > 0 {
                return None;
            }
        }
        let event = self.event(stage, None);
        if matches!(stage, Stage::Decode) {
            self.image += 1;
        }
        Some(event)
    }

    /// The event after denoising step `step` (from 0), with the latents' preview.
    pub(crate) fn step(&self, step: usize, latents: &[f32]) -> Progress {
        let (h, w) = self.latent_size;
        let preview = (latents.len() == LATENT_CHANNELS * h * w)
            .then(|| {
                let rgb: Vec<u8> = latents_to_rgba(latents, h, w)
                    .chunks_exact(4)
                    .flat_map(|p| [p[0], p[1], p[2]])
                    .collect();
                RgbImage::from_raw(w as u32, h as u32, rgb)
            })
            .flatten();
        self.event(
            Stage::Diffusion {
                step: step + 1,
                total: self.total,
            },
            preview,
        )
    }
}

/// Stops a generation from another thread: the generation checks it before every denoising
/// step and before decoding, and ends with [`crate::Error::Cancelled`]. Clones share the flag.
///
/// ```
/// let token = sd_wgsl::CancelToken::new();
/// let for_the_ui = token.clone();
/// for_the_ui.cancel();
/// assert!(token.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
