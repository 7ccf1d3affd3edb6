//! The GPU worker: one thread that owns the model and runs queued jobs one at a time, so the
//! HTTP side never waits on the GPU. Each job runs under `catch_unwind` (a panic fails that job
//! with `BACKEND_ERROR`, and the worker goes on) and under `--job-timeout`. A lost GPU device
//! ends the loop: the supervisor ([`crate::supervisor`]) fails the other jobs and re-creates
//! the model.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sd_wgsl::{Error, Model, Options, Stage};

use crate::api::{ErrorBody, Image, JobResult, Progress, Status};
use crate::jobs::{Store, Work};

/// How the worker runs jobs.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// A job running longer is stopped at its next step and fails with `JOB_TIMEOUT`.
    pub job_timeout: Option<Duration>,
    /// Faults the tests inject.
    #[cfg(feature = "test-hooks")]
    pub faults: std::sync::Arc<crate::Faults>,
}

/// Why [`run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The store was closed and its queue is empty.
    Closed,
    /// The GPU device was lost (the reason); the job that saw it has failed.
    DeviceLost(String),
}

/// Runs jobs until the store closes, or until the GPU device is lost.
pub fn run(model: &Model, jobs: &Store, options: &WorkerOptions) -> Exit {
    let loading = |work: &Work| Progress {
        current_step: 0,
        total_steps: work.params.steps as u32,
        stage: "loading".into(),
        percentage: 0.0,
        current_image: 1,
        total_images: work.params.count,
    };
    while let Some(work) = jobs.next_job(loading) {
        #[cfg(feature = "test-hooks")]
        options.faults.before_job(model);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "test-hooks")]
            options.faults.inside_job();
            run_one(model, jobs, &work, options.job_timeout)
        }));
        let outcome = outcome.unwrap_or_else(|panic| Outcome {
            status: Status::Error,
            result: None,
            error: error(
                "BACKEND_ERROR",
                format!(
                    "the generation failed with an internal error ({}); the server goes on",
                    panic_message(panic.as_ref())
                ),
            ),
            device_lost: None,
        });
        jobs.finish(&work.id, outcome.status, outcome.result, outcome.error);
        if let Some(reason) = outcome.device_lost {
            return Exit::DeviceLost(reason);
        }
    }
    Exit::Closed
}

/// What a panic said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// How a job ended.
struct Outcome {
    status: Status,
    result: Option<JobResult>,
    error: Option<ErrorBody>,
    /// The GPU device was lost: why.
    device_lost: Option<String>,
}

impl Outcome {
    fn failed(status: Status, error: Option<ErrorBody>) -> Self {
        Self {
            status,
            result: None,
            error,
            device_lost: None,
        }
    }
}

fn error(code: &str, message: String) -> Option<ErrorBody> {
    Some(ErrorBody {
        message,
        code: code.into(),
        field: None,
    })
}

fn run_one(model: &Model, jobs: &Store, work: &Work, timeout: Option<Duration>) -> Outcome {
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let timed_out = || deadline.is_some_and(|d| Instant::now() >= d);
    let params = &work.params;
    let total_images = params.count;
    let mut image = 0u32;
    // The steps actually run: fewer than `params.steps` for img2img (strength < 1).
    let mut steps_run = params.steps;
    let mut on_progress = |progress: &sd_wgsl::Progress| {
        let stage = progress.stage;
        let (stage_name, step, total, within) = match stage {
            Stage::Load | Stage::Encode => ("loading", 0, steps_run, 0.0),
            Stage::Diffusion { step, total } => {
                steps_run = total;
                (
                    "diffusion",
                    step,
                    total,
                    0.05 + 0.85 * step as f64 / total.max(1) as f64,
                )
            }
            Stage::Decode => ("decoding", steps_run, steps_run, 0.9),
            Stage::Done => return,
        };
        jobs.progress(
            &work.id,
            Progress {
                current_step: step as u32,
                total_steps: total as u32,
                stage: stage_name.into(),
                percentage: 100.0 * (f64::from(image) + within) / f64::from(total_images.max(1)),
                current_image: (image + 1).min(total_images),
                total_images,
            },
        );
        if matches!(stage, Stage::Decode) {
            image += 1;
        }
    };
    let cancelled = || work.cancel.load(Ordering::SeqCst) || timed_out();
    let mut options = Options::from_params(params);
    if let Some(init_image) = &work.init_image {
        options = options.init_image(init_image.clone());
    }
    if let Some(mask) = &work.mask {
        options = options.mask(mask.clone());
    }
    let generated = pollster::block_on(model.generate_async(
        &params.prompt,
        &options,
        &mut on_progress,
        &cancelled,
    ));
    let generated = match generated {
        Ok(g) => g,
        Err(Error::Cancelled) if timed_out() && !work.cancel.load(Ordering::SeqCst) => {
            let limit = timeout.unwrap_or_default().as_secs_f64();
            return Outcome::failed(
                Status::Error,
                error(
                    "JOB_TIMEOUT",
                    format!(
                        "the job ran longer than the server's job timeout ({limit} s) and was stopped"
                    ),
                ),
            );
        }
        Err(Error::Cancelled) => return Outcome::failed(Status::Cancelled, None),
        // The handlers check the inputs, so this is unlikely; still the client's mistake.
        Err(Error::InvalidOption { option, message }) => {
            let field = match option {
                "init_image" => "initImage",
                other => other,
            };
            return Outcome::failed(
                Status::Error,
                Some(ErrorBody {
                    message: format!("{field}: {message}"),
                    code: "INVALID_REQUEST".into(),
                    field: Some(field.into()),
                }),
            );
        }
        Err(e) => {
            if let Some(reason) = e.device_lost() {
                return Outcome {
                    device_lost: Some(reason.to_owned()),
                    ..Outcome::failed(
                        Status::Error,
                        error(
                            "DEVICE_LOST",
                            format!(
                                "the GPU device was lost during the job ({reason}); the server re-creates it"
                            ),
                        ),
                    )
                };
            }
            return Outcome::failed(Status::Error, error("BACKEND_ERROR", e.to_string()));
        }
    };
    let mut images = Vec::new();
    for (index, (picture, &seed)) in generated.images().iter().zip(generated.seeds()).enumerate() {
        match generated.encode(index, work.format) {
            Ok(bytes) => images.push(Image {
                image: base64::engine::general_purpose::STANDARD.encode(bytes),
                seed,
                width: picture.width(),
                height: picture.height(),
            }),
            Err(e) => return Outcome::failed(Status::Error, error("IO_ERROR", e.to_string())),
        }
    }
    let result = JobResult {
        images,
        format: work.format.name().into(),
        time_taken: started.elapsed().as_millis() as u64,
    };
    Outcome {
        status: Status::Complete,
        result: Some(result),
        error: None,
        device_lost: None,
    }
}
