//! The SD worker's job API (`shared/reference/sd-worker-next-steps.md`, "HTTP API"), on the
//! same job queue as `/v1/images/generations`:
//!
//! - `POST /v1/jobs` with `{"operation": {"type": "SDGenerate" | "ImageTransform", "prompt",
//!   ...}}` (snake_case keys) answers `200 {"job_id", "stream_url": "/v1/jobs/{id}/stream"}`.
//! - `GET /v1/jobs/{id}/stream`: Server-Sent Events, `data: Step i/n` for every step as the
//!   document recommends, then one `complete` event with the images (base64 PNG), or `error`
//!   or `cancelled`; then the stream ends.
//! - `GET /v1/jobs/{id}` reads a job, `DELETE /v1/jobs/{id}` cancels it.
//!
//! The document defines no error body; ours is the HTTP API's `{"error": {"code", "field",
//! "message"}}` with the field as this dialect spells it (`operation.steps`).

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt as _, stream};
use sd_core::request::{RequestError, take_text};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;
use utoipa::ToSchema;

use super::{SNAKE_CASE, to_common, to_snake};
use crate::api::{ErrorBody, ErrorResponse, JobState, Progress, Status};
use crate::inputs::{Encoded, Given};
use crate::jobs::{JobInfo, Store, uuid_v4};
use crate::routes::{ApiError, Shared, read_body, too_big, whole_request};
use crate::submit::{self, Intake, Refused};
use sd_wgsl::ImageFormat as Format;

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

/// The request body of `POST /v1/jobs` (documentation; the handler reads the JSON key by key
/// to name a bad one in its error).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)]
#[schema(as = JobRequest)]
pub struct JobRequestDoc {
    pub operation: JobOperationDoc,
}

/// What to run. Unknown keys are refused.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)]
#[schema(as = JobOperation)]
pub struct JobOperationDoc {
    #[serde(rename = "type")]
    pub kind: OperationType,
    /// Required.
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Default 20, from 1 to 150. ImageTransform runs about `steps * strength` of them.
    pub steps: Option<u32>,
    /// Default 7.5.
    pub guidance_scale: Option<f32>,
    /// Default: random.
    pub seed: Option<u64>,
    /// A multiple of 8 from 64 to 2048. Default: the model's native width, or for
    /// ImageTransform the image's width rounded down to a multiple of 8.
    pub width: Option<u32>,
    /// Default: as `width`.
    pub height: Option<u32>,
    /// `euler_a` (default), `euler`, `ddim`, `dpm++2m_karras`, ... (as `--sampler`).
    pub sampler: Option<String>,
    /// ImageTransform only, and required there: the input image, base64 of a PNG, JPEG or
    /// WebP file (a `data:` URL works too), at most 4096x4096.
    pub image: Option<String>,
    /// ImageTransform only: how much of the image is repainted, 0 to 1 (default 0.8).
    pub strength: Option<f32>,
    /// ImageTransform only (inpainting): the mask, encoded as `image`; white = repaint.
    pub mask: Option<String>,
}

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum OperationType {
    /// Text to image.
    #[serde(rename = "SDGenerate")]
    SdGenerate,
    /// Image to image (with `mask`: inpainting).
    ImageTransform,
}

/// `200` answer to `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobSubmitted {
    pub job_id: String,
    /// `/v1/jobs/{job_id}/stream`.
    pub stream_url: String,
}

/// One generated image.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobImage {
    /// A PNG file, base64.
    pub image: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
}

/// The stream's `complete` event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobComplete {
    pub job_id: String,
    pub images: Vec<JobImage>,
}

/// The stream's `error` event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobFailed {
    pub job_id: String,
    pub error: ErrorBody,
}

/// The stream's `cancelled` event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobCancelled {
    pub job_id: String,
}

/// Where a running job is.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobStep {
    /// Steps done (0 while the prompt is encoded).
    pub step: u32,
    /// Steps this job runs.
    pub total: u32,
    /// `loading` (text encoder), `diffusion` or `decoding`.
    pub stage: String,
}

/// A job as `GET` and `DELETE /v1/jobs/{id}` show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobStatus {
    pub job_id: String,
    /// `pending`, `in_progress`, `complete`, `error` or `cancelled`.
    pub status: Status,
    /// While `in_progress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobStep>,
    /// When `complete`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<JobImage>>,
    /// When `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

// ---------------------------------------------------------------------------------------------
// Reading the request
// ---------------------------------------------------------------------------------------------

/// The operation keys of both types.
const KEYS: [&str; 9] = [
    "type",
    "prompt",
    "negative_prompt",
    "steps",
    "guidance_scale",
    "seed",
    "sampler",
    "width",
    "height",
];
/// ImageTransform's own keys.
const TRANSFORM_KEYS: [&str; 3] = ["image", "strength", "mask"];

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::invalid(RequestError {
        field: field.into(),
        message: message.into(),
    })
}

/// A field of the common request under this dialect's name (`operation.negative_prompt`).
fn wire_field(field: &str) -> String {
    if field == "request" || field.starts_with("operation") {
        field.to_owned()
    } else {
        format!("operation.{}", to_snake(field))
    }
}

/// A request error with the field renamed for this dialect.
fn in_operation(e: RequestError) -> RequestError {
    RequestError {
        field: wire_field(&e.field),
        message: e.message,
    }
}

/// The operation of a `POST /v1/jobs` body, in the common keys, and its images' base64.
#[derive(Debug)]
pub struct Operation {
    pub obj: Map<String, Value>,
    pub image: Option<String>,
    pub mask: Option<String>,
}

/// Reads a `POST /v1/jobs` body: `{"operation": {"type": ..., ...}}`, checked key by key.
pub fn read_operation(body: &[u8]) -> Result<Operation, ApiError> {
    let json = std::str::from_utf8(body)
        .map_err(|_| ApiError::invalid(whole_request("the body is not UTF-8 text".into())))?;
    let value: Value = serde_json::from_str(json)
        .map_err(|e| ApiError::invalid(whole_request(format!("not valid JSON: {e}"))))?;
    let shape = r#"{"operation": {"type": "SDGenerate" | "ImageTransform", "prompt": ..., ...}}"#;
    let Value::Object(mut top) = value else {
        return Err(ApiError::invalid(whole_request(format!(
            "must be a JSON object: {shape}"
        ))));
    };
    if let Some(key) = top.keys().find(|k| *k != "operation") {
        return Err(invalid(
            key.as_str(),
            format!("unknown key; the request is {shape}"),
        ));
    }
    let mut operation = match top.remove("operation") {
        None | Some(Value::Null) => {
            return Err(invalid("operation", format!("is required: {shape}")));
        }
        Some(Value::Object(operation)) => operation,
        Some(other) => {
            return Err(invalid(
                "operation",
                format!("must be an object, got {other}"),
            ));
        }
    };
    let kind = match operation.get("type") {
        None | Some(Value::Null) => {
            return Err(invalid(
                "operation.type",
                "is required: SDGenerate or ImageTransform",
            ));
        }
        Some(Value::String(name)) if name == "SDGenerate" => OperationType::SdGenerate,
        Some(Value::String(name)) if name == "ImageTransform" => OperationType::ImageTransform,
        Some(other) => {
            return Err(invalid(
                "operation.type",
                format!("must be SDGenerate or ImageTransform, got {other}"),
            ));
        }
    };
    let transform = kind == OperationType::ImageTransform;
    for key in operation.keys() {
        if KEYS.contains(&key.as_str()) || (transform && TRANSFORM_KEYS.contains(&key.as_str())) {
            continue;
        }
        let message = if TRANSFORM_KEYS.contains(&key.as_str()) {
            "is only for ImageTransform".to_owned()
        } else {
            format!(
                "unknown key; the keys are {}, and for ImageTransform {}",
                KEYS.join(", "),
                TRANSFORM_KEYS.join(", ")
            )
        };
        return Err(invalid(format!("operation.{key}"), message));
    }
    let mut read_text =
        |key| take_text(&mut operation, key).map_err(|e| ApiError::invalid(in_operation(e)));
    let image = read_text("image")?;
    let mask = read_text("mask")?;
    if transform && image.is_none() {
        return Err(invalid(
            "operation.image",
            "is required for ImageTransform: the input image, base64 of a PNG, JPEG or WebP file",
        ));
    }
    let obj = operation
        .into_iter()
        .filter(|(key, _)| !["type", "image", "mask"].contains(&key.as_str()))
        .map(|(key, value)| (to_common(&key).to_owned(), value))
        .collect();
    Ok(Operation { obj, image, mask })
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no job `{id}`: unknown, or its result expired"),
    )
}

fn images_of(state: &JobState) -> Option<Vec<JobImage>> {
    state.result.as_ref().map(|result| {
        result
            .images
            .iter()
            .map(|image| JobImage {
                image: image.image.clone(),
                seed: image.seed,
                width: image.width,
                height: image.height,
            })
            .collect()
    })
}

/// A job's error as this dialect names fields (the worker may name `initImage`).
fn error_of(state: &JobState) -> Option<ErrorBody> {
    state.error.clone().map(|mut error| {
        if let Some(field) = error.field.take() {
            let renamed = wire_field(&field);
            if let Some(rest) = error.message.strip_prefix(&format!("{field}: ")) {
                error.message = format!("{renamed}: {rest}");
            }
            error.field = Some(renamed);
        }
        error
    })
}

fn status_of(info: &JobInfo) -> JobStatus {
    let state = &info.state;
    JobStatus {
        job_id: state.id.clone(),
        status: state.status,
        progress: state.progress.as_ref().map(|p| JobStep {
            step: p.current_step,
            total: p.total_steps,
            stage: p.stage.clone(),
        }),
        images: images_of(state),
        error: error_of(state),
    }
}

/// Starts a job (`SDGenerate`: text to image; `ImageTransform`: img2img, with `mask`
/// inpainting); answers at once. Follow it at `stream_url`.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "jobs_create", tag = "SD worker job API",
    request_body = JobRequestDoc,
    responses(
        (status = 200, body = JobSubmitted),
        (status = 400, body = ErrorResponse, description = "INVALID_REQUEST, naming the field (`operation.steps`)"),
        (status = 503, body = ErrorResponse, description = "SERVER_BUSY: the queue is full; see Retry-After"),
    ))]
pub async fn create(State(app): Shared, body: Body) -> Result<Json<JobSubmitted>, ApiError> {
    let (place, body) = submit::reserve(&app, body)
        .await
        .map_err(ApiError::refused)?;
    let body = read_body(body, app.max_image_body_bytes).await?;
    let Operation { obj, image, mask } = read_operation(&body)?;
    // The images may be large; the rest of the request may not.
    let image_chars = image.as_ref().map_or(0, String::len) + mask.as_ref().map_or(0, String::len);
    if body.len().saturating_sub(image_chars) > app.max_body_bytes {
        return Err(too_big(
            app.max_body_bytes,
            " not counting operation.image and operation.mask",
        ));
    }
    drop(body);
    let given = |field, text: Option<String>| {
        text.map(|text| Given {
            field,
            data: Encoded::Base64(text),
        })
    };
    let intake = Intake {
        obj,
        dialect: SNAKE_CASE,
        image_field: "operation.image",
        image: given("image", image),
        mask: given("mask", mask),
        format: Format::Png,
        id: Some(uuid_v4()),
    };
    let state = submit::submit(&app, place, intake)
        .await
        .map_err(|refused| match refused {
            Refused::Invalid(e) => ApiError::invalid(in_operation(e)),
            other => ApiError::refused(other),
        })?;
    Ok(Json(JobSubmitted {
        stream_url: format!("/v1/jobs/{}/stream", state.id),
        job_id: state.id,
    }))
}

/// A job's status: `pending`, `in_progress` (with `progress`), `complete` (with `images`),
/// `error` (with `error`) or `cancelled`.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "jobs_get", tag = "SD worker job API",
    params(("id" = String, Path, description = "The `job_id` `POST /v1/jobs` returned")),
    responses((status = 200, body = JobStatus), (status = 404, body = ErrorResponse)))]
pub async fn get(State(app): Shared, Path(id): Path<String>) -> Result<Json<JobStatus>, ApiError> {
    app.jobs
        .info(&id)
        .map(|info| Json(status_of(&info)))
        .ok_or_else(|| not_found(&id))
}

/// Cancels a pending or running job (a running one stops within one step; its stream ends
/// with `cancelled`). Answers the status after the request.
#[utoipa::path(delete, path = "/v1/jobs/{id}", operation_id = "jobs_cancel", tag = "SD worker job API",
    params(("id" = String, Path, description = "The `job_id` `POST /v1/jobs` returned")),
    responses((status = 200, body = JobStatus), (status = 404, body = ErrorResponse)))]
pub async fn cancel(
    State(app): Shared,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    app.jobs.cancel(&id).ok_or_else(|| not_found(&id))?;
    app.jobs
        .info(&id)
        .map(|info| Json(status_of(&info)))
        .ok_or_else(|| not_found(&id))
}

/// Which steps a stream has announced. The store's watch channel keeps only the newest state,
/// so two quick steps may arrive as one change: each change announces every step up to it,
/// and a stream has one `Step i/n` line per step, in order, whatever the timing.
#[derive(Debug, Default)]
struct Steps {
    /// 1-based image of a batch (jobs of other routes may have several).
    image: u32,
    /// Steps announced of that image.
    done: u32,
}

impl Steps {
    fn lines(&mut self, progress: &Progress) -> Vec<Event> {
        if progress.current_image != self.image {
            self.image = progress.current_image;
            self.done = 0;
        }
        let upto = progress.current_step.min(progress.total_steps);
        let lines = (self.done + 1..=upto)
            .map(|step| Event::default().data(format!("Step {step}/{}", progress.total_steps)))
            .collect();
        self.done = self.done.max(upto);
        lines
    }
}

/// The event that ends a stream.
fn final_event(state: &JobState) -> Event {
    let job_id = state.id.clone();
    let data = match state.status {
        Status::Complete => serde_json::to_string(&JobComplete {
            job_id,
            images: images_of(state).unwrap_or_default(),
        }),
        Status::Error => serde_json::to_string(&JobFailed {
            job_id,
            error: error_of(state).unwrap_or_else(|| ErrorBody {
                message: "the job failed".into(),
                code: "BACKEND_ERROR".into(),
                field: None,
            }),
        }),
        _ => serde_json::to_string(&JobCancelled { job_id }),
    };
    Event::default()
        .event(state.status.name())
        .data(data.unwrap_or_default())
}

/// A stream in progress.
struct Follow {
    updates: watch::Receiver<JobState>,
    steps: Steps,
    first: bool,
}

/// The events of one state change (and whether the stream goes on).
fn events_of(store: &Store, follow: &mut Follow, state: &JobState) -> Vec<Event> {
    if !state.status.is_final() {
        return state
            .progress
            .as_ref()
            .map(|p| follow.steps.lines(p))
            .unwrap_or_default();
    }
    // The steps run since the last change (all of them for a late subscriber), then the end.
    let mut events = store
        .info(&state.id)
        .and_then(|info| info.last_progress)
        .map(|p| follow.steps.lines(&p))
        .unwrap_or_default();
    events.push(final_event(state));
    events
}

/// Server-Sent Events: `data: Step i/n` for every step (unnamed events, as the SD worker's
/// document recommends), then one `complete` event (`JobComplete`: the images), `error`
/// (`JobFailed`) or `cancelled` (`JobCancelled`); then the stream ends.
#[utoipa::path(get, path = "/v1/jobs/{id}/stream", operation_id = "jobs_stream", tag = "SD worker job API",
    params(("id" = String, Path, description = "The `job_id` `POST /v1/jobs` returned")),
    responses(
        (status = 200, content_type = "text/event-stream", body = crate::api::StreamEventDoc,
         description = "`data: Step i/n` per step, then `event: complete` with a JobComplete, \
                        `event: error` with a JobFailed or `event: cancelled` with a JobCancelled"),
        (status = 404, body = ErrorResponse)))]
pub async fn stream(
    State(app): Shared,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let updates = app.jobs.subscribe(&id).ok_or_else(|| not_found(&id))?;
    let store = app.jobs.store.clone();
    let start = Follow {
        updates,
        steps: Steps::default(),
        first: true,
    };
    // The current state, then each change, until and including the first final one.
    let changes = stream::unfold(Some(start), move |next| {
        let store = store.clone();
        async move {
            let mut follow = next?;
            if !follow.first && follow.updates.changed().await.is_err() {
                return None;
            }
            follow.first = false;
            let state = follow.updates.borrow_and_update().clone();
            let events = events_of(&store, &mut follow, &state);
            Some((events, (!state.status.is_final()).then_some(follow)))
        }
    });
    let events =
        changes.flat_map(|events| stream::iter(events.into_iter().map(Ok::<Event, Infallible>)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(image: u32, step: u32, total: u32) -> Progress {
        Progress {
            current_step: step,
            total_steps: total,
            stage: "diffusion".into(),
            percentage: 0.0,
            current_image: image,
            total_images: 1,
        }
    }

    #[test]
    fn every_step_is_announced_once() {
        let mut steps = Steps::default();
        let counts: Vec<usize> = [(1, 0), (1, 1), (1, 4), (1, 4), (1, 5)]
            .into_iter()
            .map(|(image, step)| steps.lines(&progress(image, step, 5)).len())
            .collect();
        assert_eq!(counts, [0, 1, 3, 0, 1]);
        assert_eq!(steps.lines(&progress(2, 2, 5)).len(), 2, "the next image");
    }

    #[test]
    fn operations_read_into_the_common_keys() {
        let op = read_operation(
            br#"{"operation": {"type": "ImageTransform", "prompt": "x", "negative_prompt": "y",
                 "guidance_scale": 5, "image": "abc", "strength": 0.5}}"#,
        )
        .expect("valid");
        assert_eq!(op.image.as_deref(), Some("abc"));
        let mut keys: Vec<&str> = op.obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["guidance_scale", "negativePrompt", "prompt", "strength"]
        );
        assert_eq!(wire_field("negativePrompt"), "operation.negative_prompt");
        assert_eq!(wire_field("initImage"), "operation.image");
        assert_eq!(wire_field("request"), "request");
    }
}
