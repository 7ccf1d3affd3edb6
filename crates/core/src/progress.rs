//! Progress events of a generation, for the CLI's progress line, the browser UI and the HTTP
//! API's event stream.
//!
//! The stages follow diffusers' `StableDiffusionPipeline.__call__`
//! (`diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py`): encode the prompt,
//! run the denoising loop (its `callback_on_step_end` fires after each step), decode the latents.
//! `no_std` has no clock, so the caller measures time and passes the milliseconds elapsed
//! since the generation started.
//!
//! Events serialise to JSON (serde) as `{"stage": "diffusion", "step": 3, "total": 20,
//! "elapsed_ms": 812.5}`.

use core::fmt;

use serde::Serialize;

/// Where a generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Loading weights and compiling kernels.
    Load,
    /// Tokenizing and running the text encoder.
    Encode,
    /// Denoising: `step` of `total` steps done (1-based after a step; 0 before the first).
    Diffusion {
        /// Steps done.
        step: usize,
        /// All steps.
        total: usize,
    },
    /// Running the VAE decoder.
    Decode,
    /// Finished.
    Done,
}

impl Stage {
    /// The stage's name (`load`, `encode`, `diffusion`, `decode`, `done`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Encode => "encode",
            Self::Diffusion { .. } => "diffusion",
            Self::Decode => "decode",
            Self::Done => "done",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Diffusion { step, total } => write!(f, "diffusion {step}/{total}"),
            other => f.write_str(other.name()),
        }
    }
}

/// One progress event: a stage and the time since the generation started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Progress {
    /// The stage reached.
    #[serde(flatten)]
    pub stage: Stage,
    /// Milliseconds since the generation started, as measured by the caller.
    pub elapsed_ms: f64,
}

impl Progress {
    /// An event at `stage`, `elapsed_ms` after the start.
    pub fn new(stage: Stage, elapsed_ms: f64) -> Self {
        Self { stage, elapsed_ms }
    }

    /// The fraction of the denoising loop done, in `[0, 1]`: 0 before it, `step / total`
    /// during it, 1 after it.
    pub fn diffusion_fraction(&self) -> f64 {
        match self.stage {
            Stage::Load | Stage::Encode => 0.0,
            Stage::Diffusion { step, total } if total > 0 => {
                (step as f64 / total as f64).clamp(0.0, 1.0)
            }
            Stage::Diffusion { .. } => 0.0,
            Stage::Decode | Stage::Done => 1.0,
        }
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:.0} ms)", self.stage, self.elapsed_ms)
    }
}
