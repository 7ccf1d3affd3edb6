//! The HTTP handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::{Stream, StreamExt as _};
use sd_core::request::{Dialect, RequestError, request_object, take_text, text};
use serde_json::{Map, Value};

use crate::api::{Created, ErrorBody, ErrorResponse, Health, JobState, ModelInfo, Models};
use crate::guard::Caller;
use crate::inputs::{Encoded, Given};
use crate::jobs::{Jobs, Place};
use crate::submit::{self, BUSY_MESSAGE, CLOSED_MESSAGE, Intake, Refused};
use sd_wgsl::ImageFormat as Format;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub jobs: Jobs,
    pub model: ModelInfo,
    /// What requests that leave settings out get (the model's size, steps, guidance, sampler).
    pub defaults: sd_core::params::ModelDefaults,
    /// An extra folder of model folders (`--models-dir`) listed by `GET /v1/models`.
    pub models_dir: Option<std::path::PathBuf>,
    /// The largest request body besides its images.
    pub max_body_bytes: usize,
    /// The largest request body carrying images (`initImage`, `mask`, an upload).
    pub max_image_body_bytes: usize,
    /// Input image decodes running at once ([`crate::submit::CONCURRENT_DECODES`]).
    pub decodes: Arc<tokio::sync::Semaphore>,
}

/// A fault of the body as a whole (`field: request`).
pub(crate) fn whole_request(message: String) -> RequestError {
    RequestError {
        field: "request".into(),
        message,
    }
}

fn request_error(message: String) -> ApiError {
    ApiError::invalid(whole_request(message))
}

/// A body over `limit` bytes (`what`: which parts count).
pub(crate) fn too_big(limit: usize, what: &str) -> ApiError {
    request_error(format!("the body is larger than {limit} bytes{what}"))
}

/// How long, at most, a body over the limit is read on (and dropped).
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads a request body of at most `limit` bytes (the image routes disable axum's own limit
/// and call this). A longer body is read on and dropped, up to as much again or
/// [`DRAIN_TIME`], before the answer: a client still sending it then reads the 400 instead
/// of a reset connection.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    read_limited(body, limit).await.map_err(ApiError::invalid)
}

/// [`read_body`] with a dialect-neutral error (`field: request`).
pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<Bytes, RequestError> {
    let mut stream = body.into_data_stream();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| whole_request(format!("cannot read the body: {e}")))?;
        if data.len() + chunk.len() > limit {
            let read = data.len() + chunk.len();
            drop(data);
            drain(stream, read, limit).await;
            return Err(whole_request(format!(
                "the body is larger than {limit} bytes"
            )));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(data))
}

/// Reads a body on and drops it, up to `limit` bytes or [`DRAIN_TIME`], so that a client
/// still sending it reads the answer instead of a reset connection.
pub(crate) async fn discard_body(body: Body, limit: usize) {
    drain(body.into_data_stream(), 0, limit).await;
}

async fn drain(mut stream: axum::body::BodyDataStream, mut read: usize, limit: usize) {
    let drain = async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > limit.saturating_mul(2) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

pub type Shared = State<Arc<AppState>>;

/// An error answer with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                message: message.into(),
                code: code.into(),
                field: None,
            },
            retry_after: None,
        }
    }

    /// `400 INVALID_REQUEST` naming the field; the message starts with it.
    pub(crate) fn invalid(error: RequestError) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            error.to_string(),
        );
        e.body.field = Some(error.field);
        e
    }

    fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no generation `{id}`: unknown, or its result expired"),
        )
    }

    /// A job not queued: `400 INVALID_REQUEST`, `503 SERVER_BUSY` (with `Retry-After` when the
    /// queue is full) or `500 IO_ERROR`.
    pub(crate) fn refused(refused: Refused) -> Self {
        match refused {
            Refused::Invalid(e) => Self::invalid(e),
            Refused::Busy => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "SERVER_BUSY", BUSY_MESSAGE);
                e.retry_after = Some(5);
                e
            }
            Refused::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_BUSY",
                CLOSED_MESSAGE,
            ),
            Refused::Unavailable(reason) => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "SERVER_BUSY", reason);
                e.retry_after = Some(5);
                e
            }
            Refused::Internal(message) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "IO_ERROR", message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorResponse { error: self.body })).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Starts an image generation; answers at once. With `initImage` (and `mask`), img2img (and
/// inpainting).
#[utoipa::path(post, path = "/v1/images/generations",
    request_body = crate::api::GenerationRequestDoc,
    responses(
        (status = 201, body = Created),
        (status = 400, body = ErrorResponse, description = "INVALID_REQUEST, naming the field"),
        (status = 503, body = ErrorResponse, description = "SERVER_BUSY: the queue is full; see Retry-After"),
    ))]
pub async fn create(
    State(app): Shared,
    body: Body,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let (place, body) = submit::reserve(&app, body)
        .await
        .map_err(ApiError::refused)?;
    let body = read_body(body, app.max_image_body_bytes).await?;
    let json = std::str::from_utf8(&body)
        .map_err(|_| request_error("the body is not UTF-8 text".into()))?;
    let dialect = Dialect::HTTP;
    let mut obj = request_object(json, &dialect).map_err(ApiError::invalid)?;
    let init_image = take_text(&mut obj, "initImage").map_err(ApiError::invalid)?;
    let mask = take_text(&mut obj, "mask").map_err(ApiError::invalid)?;
    // The images may be large; the rest of the request may not.
    let image_chars =
        init_image.as_ref().map_or(0, String::len) + mask.as_ref().map_or(0, String::len);
    if body.len().saturating_sub(image_chars) > app.max_body_bytes {
        return Err(too_big(
            app.max_body_bytes,
            " not counting initImage and mask",
        ));
    }
    // The images live on as their strings; the body's copy goes now.
    drop(body);
    let given = |field, text: Option<String>| {
        text.map(|text| Given {
            field,
            data: Encoded::Base64(text),
        })
    };
    submit(
        &app,
        place,
        obj,
        "initImage",
        given("initImage", init_image),
        given("mask", mask),
    )
    .await
}

/// The text parts of `POST /v1/images/edits` (besides the files `image` and `mask`), as in
/// the JSON request; the numeric ones are read as JSON numbers.
const EDIT_TEXT_PARTS: [&str; 11] = [
    "prompt",
    "negativePrompt",
    "steps",
    "cfgScale",
    "seed",
    "sampler",
    "width",
    "height",
    "count",
    "strength",
    "format",
];
const EDIT_NUMBER_PARTS: [&str; 7] = [
    "steps", "cfgScale", "seed", "width", "height", "count", "strength",
];

/// img2img or inpainting from uploaded files (`multipart/form-data`): the parts `image` (a PNG,
/// JPEG or WebP file, required), `mask` (optional, white = repaint), `prompt` (required) and the
/// other fields of the JSON request as text. Answers like `POST /v1/images/generations`.
#[utoipa::path(post, path = "/v1/images/edits",
    request_body(content = crate::api::EditRequestDoc, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = Created),
        (status = 400, body = ErrorResponse, description = "INVALID_REQUEST, naming the field (`image`, `mask`, `prompt`, ...)"),
        (status = 503, body = ErrorResponse, description = "SERVER_BUSY: the queue is full; see Retry-After"),
    ))]
pub async fn edit(
    State(app): Shared,
    request: Request,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Err(request_error(format!(
            "must be multipart/form-data with the parts image, mask (optional), prompt, ...; \
             got Content-Type {content_type:?}"
        )));
    }
    let (parts, body) = request.into_parts();
    let (place, body) = submit::reserve(&app, body)
        .await
        .map_err(ApiError::refused)?;
    let body = read_body(body, app.max_image_body_bytes).await?;
    let request = Request::from_parts(parts, Body::from(body));
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        request_error(format!(
            "must be multipart/form-data with the parts image, mask, prompt, ...: {}",
            e.body_text()
        ))
    })?;
    let EditForm { obj, image, mask } = read_edit_form(&mut multipart, app.max_body_bytes).await?;
    if image.is_none() && mask.is_none() && obj.is_empty() {
        return Err(request_error(
            "no parts: expected multipart/form-data with image, prompt and optionally mask".into(),
        ));
    }
    if image.is_none() && mask.is_none() {
        return Err(ApiError::invalid(RequestError {
            field: "image".into(),
            message: "is required: the input image file (PNG, JPEG or WebP)".into(),
        }));
    }
    submit(&app, place, obj, "image", image, mask).await
}

/// The parts of a `POST /v1/images/edits` form: the text parts in the JSON request's keys
/// (numbers as JSON numbers) and the files.
#[derive(Debug, Default)]
pub struct EditForm {
    pub obj: Map<String, Value>,
    pub image: Option<Given>,
    pub mask: Option<Given>,
}

/// Reads a `POST /v1/images/edits` form part by part: every part named and known, none twice,
/// the text parts at most `max_text_bytes` in all.
pub async fn read_edit_form(
    multipart: &mut Multipart,
    max_text_bytes: usize,
) -> Result<EditForm, ApiError> {
    let part_error = |name: &str, e: MultipartError| {
        if name.is_empty() {
            request_error(format!("cannot read the multipart body: {}", e.body_text()))
        } else {
            ApiError::invalid(RequestError {
                field: name.into(),
                message: format!("cannot read this part: {}", e.body_text()),
            })
        }
    };
    let mut obj = Map::new();
    let (mut image, mut mask) = (None, None);
    let mut text_bytes = 0usize;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| part_error("", e))?
    {
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(request_error("a part without a name".into()));
        };
        let invalid = |message: String| {
            ApiError::invalid(RequestError {
                field: name.clone(),
                message,
            })
        };
        let seen = match name.as_str() {
            "image" => image.is_some(),
            "mask" => mask.is_some(),
            other => obj.contains_key(other),
        };
        if seen {
            return Err(invalid("given twice".into()));
        }
        match name.as_str() {
            "image" | "mask" => {
                let bytes = field.bytes().await.map_err(|e| part_error(&name, e))?;
                let given = Some(Given {
                    field: if name == "image" { "image" } else { "mask" },
                    data: Encoded::Bytes(bytes),
                });
                if name == "image" {
                    image = given;
                } else {
                    mask = given;
                }
            }
            known if EDIT_TEXT_PARTS.contains(&known) => {
                let value = field.text().await.map_err(|e| part_error(&name, e))?;
                text_bytes += value.len();
                if text_bytes > max_text_bytes {
                    return Err(too_big(max_text_bytes, " not counting image and mask"));
                }
                let trimmed = value.trim();
                let value = if EDIT_NUMBER_PARTS.contains(&known) {
                    if trimmed.is_empty() {
                        continue; // an empty form field: not given
                    }
                    // A number if it reads as one; else the parser names the field.
                    serde_json::from_str::<serde_json::Number>(trimmed)
                        .map_or(Value::String(value.clone()), Value::Number)
                } else if known == "prompt" || known == "negativePrompt" {
                    Value::String(value)
                } else if trimmed.is_empty() {
                    continue;
                } else {
                    Value::String(trimmed.to_owned())
                };
                obj.insert(name, value);
            }
            _ => {
                return Err(invalid(format!(
                    "unknown part; the parts are image, mask, {}",
                    EDIT_TEXT_PARTS.join(", ")
                )));
            }
        }
    }
    Ok(EditForm { obj, image, mask })
}

/// What both creating routes share: the `format`, then the common checks and the queue.
async fn submit(
    app: &AppState,
    place: Place,
    obj: Map<String, Value>,
    image_field: &'static str,
    image: Option<Given>,
    mask: Option<Given>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let format = match text(&obj, "format").map_err(ApiError::invalid)? {
        None => Format::default(),
        Some(name) => Format::parse(&name).ok_or_else(|| {
            ApiError::invalid(RequestError {
                field: "format".into(),
                message: format!(
                    "unknown format `{name}`; the formats are {}",
                    Format::ALL.map(Format::name).join(", ")
                ),
            })
        })?,
    };
    let intake = Intake {
        obj,
        dialect: Dialect::HTTP,
        image_field,
        image,
        mask,
        format,
        id: None,
    };
    let state = submit::submit(app, place, intake)
        .await
        .map_err(ApiError::refused)?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id: state.id,
            status: state.status,
            created_at: state.created_at,
        }),
    ))
}

/// A generation's state: pending, in_progress (with progress), complete (with the images),
/// error or cancelled.
#[utoipa::path(get, path = "/v1/images/generations/{id}",
    params(("id" = String, Path, description = "The id `POST` returned")),
    responses((status = 200, body = JobState), (status = 404, body = ErrorResponse)))]
pub async fn get(State(app): Shared, Path(id): Path<String>) -> Result<Json<JobState>, ApiError> {
    app.jobs
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(&id))
}

/// Cancels a pending or running generation (a running one stops within one step). Answers
/// the state after the request.
#[utoipa::path(delete, path = "/v1/images/generations/{id}",
    params(("id" = String, Path, description = "The id `POST` returned")),
    responses((status = 200, body = JobState), (status = 404, body = ErrorResponse)))]
pub async fn cancel(
    State(app): Shared,
    Path(id): Path<String>,
) -> Result<Json<JobState>, ApiError> {
    app.jobs
        .cancel(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(&id))
}

/// Server-Sent Events: `progress` with the job state at every change, then one `complete`,
/// `error` or `cancelled` event with the final state; then the stream ends.
#[utoipa::path(get, path = "/v1/images/generations/{id}/events",
    params(("id" = String, Path, description = "The id `POST` returned")),
    responses(
        (status = 200, content_type = "text/event-stream", body = crate::api::StreamEventDoc,
         description = "events `progress`, then `complete` | `error` | `cancelled`, each with the job state (a JobState) as its data"),
        (status = 404, body = ErrorResponse)))]
pub async fn events(
    State(app): Shared,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let updates = app
        .jobs
        .subscribe(&id)
        .ok_or_else(|| ApiError::not_found(&id))?;
    // The current state, then each change, until and including the first final one.
    let stream = futures_util::stream::unfold(Some((updates, true)), |next| async move {
        let (mut updates, first) = next?;
        if !first && updates.changed().await.is_err() {
            return None;
        }
        let state = updates.borrow_and_update().clone();
        let name = if state.status.is_final() {
            state.status.name()
        } else {
            "progress"
        };
        let data = serde_json::to_string(&state).unwrap_or_default();
        let event: Result<Event, Infallible> = Ok(Event::default().event(name).data(data));
        let next = (!state.status.is_final()).then_some((updates, false));
        Some((event, next))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Whether the server can run jobs and whether a job runs or waits: `200` with status `ok`,
/// or `503` with status `unavailable` and the reason while the worker is being re-created
/// (after a lost GPU device or a dead worker).
#[utoipa::path(get, path = "/health", responses(
    (status = 200, body = Health),
    (status = 503, body = Health, description = "The worker cannot run jobs now; `reason` says why")))]
pub async fn health(State(app): Shared) -> (StatusCode, Json<Health>) {
    let reason = app.jobs.down();
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(Health {
            status: if reason.is_some() {
                "unavailable"
            } else {
                "ok"
            }
            .into(),
            busy: app.jobs.busy(),
            device: app.model.device.clone(),
            reason,
        }),
    )
}

/// The loaded model and the models that load by name (looked up now: a preset downloaded
/// since the start shows as downloaded). A model folder's `location` is its full path only
/// for a caller with the server's API key; others see its name.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = Models)))]
pub async fn models(State(app): Shared, caller: Option<Extension<Caller>>) -> Json<Models> {
    let dir = app.models_dir.clone();
    let full_paths = caller.is_some_and(|Extension(c)| c.authenticated);
    // Directory listings and cache lookups: file system work, off the async threads.
    let models =
        tokio::task::spawn_blocking(move || crate::local_models(dir.as_deref(), full_paths))
            .await
            .unwrap_or_default();
    Json(Models {
        loaded: app.model.clone(),
        available: models
            .iter()
            .filter(|m| m.downloaded)
            .map(|m| m.name.clone())
            .collect(),
        models,
    })
}

/// Unknown paths: a JSON 404 like every other error.
pub async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}
