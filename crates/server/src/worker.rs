//! The GPU worker: one thread that owns the model and runs queued jobs one at a time, so the
//! HTTP side never waits on the GPU.

use std::sync::atomic::Ordering;
use std::time::Instant;

use base64::Engine as _;
use sd_wgsl::{Error, Model, Options, Stage};
use tokio::sync::mpsc;

use crate::api::{ErrorBody, Image, JobResult, Progress, Status};
use crate::jobs::{Store, Work};

/// Runs jobs until the queue closes (every sender dropped at shutdown).
pub fn run(model: &Model, jobs: &Store, mut queue: mpsc::UnboundedReceiver<Work>) {
    while let Some(work) = queue.blocking_recv() {
        let loading = Progress {
            current_step: 0,
            total_steps: work.params.steps as u32,
            stage: "loading".into(),
            percentage: 0.0,
            current_image: 1,
            total_images: work.params.count,
        };
        if !jobs.start(&work.id, loading) {
            continue; // cancelled while waiting
        }
        let (status, result, error) = run_one(model, jobs, &work);
        jobs.finish(&work.id, status, result, error);
    }
}

fn error(code: &str, message: String) -> Option<ErrorBody> {
    Some(ErrorBody {
        message,
        code: code.into(),
        field: None,
    })
}

fn run_one(
    model: &Model,
    jobs: &Store,
    work: &Work,
) -> (Status, Option<JobResult>, Option<ErrorBody>) {
    let started = Instant::now();
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
    let cancelled = || work.cancel.load(Ordering::SeqCst);
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
        Err(Error::Cancelled) => return (Status::Cancelled, None, None),
        // The handlers check the inputs, so this is unlikely; still the client's mistake.
        Err(Error::InvalidOption { option, message }) => {
            let field = match option {
                "init_image" => "initImage",
                other => other,
            };
            return (
                Status::Error,
                None,
                Some(ErrorBody {
                    message: format!("{field}: {message}"),
                    code: "INVALID_REQUEST".into(),
                    field: Some(field.into()),
                }),
            );
        }
        Err(e) => return (Status::Error, None, error("BACKEND_ERROR", e.to_string())),
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
            Err(e) => return (Status::Error, None, error("IO_ERROR", e.to_string())),
        }
    }
    let result = JobResult {
        images,
        format: work.format.name().into(),
        time_taken: started.elapsed().as_millis() as u64,
    };
    (Status::Complete, Some(result), None)
}
