//! The HTTP handlers.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use sd_core::request::{Dialect, RequestError, parse_params, request_object, text};

use crate::api::{Created, ErrorBody, ErrorResponse, Health, JobState, ModelInfo, Models};
use crate::encode::Format;
use crate::jobs::{Jobs, Rejected};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub jobs: Jobs,
    pub model: ModelInfo,
    pub available: Vec<String>,
    pub max_body_bytes: usize,
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
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
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

    fn invalid(error: RequestError) -> Self {
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

/// Starts an image generation; answers at once.
#[utoipa::path(post, path = "/v1/images/generations",
    request_body = crate::api::GenerationRequestDoc,
    responses(
        (status = 201, body = Created),
        (status = 400, body = ErrorResponse, description = "INVALID_REQUEST, naming the field"),
        (status = 503, body = ErrorResponse, description = "SERVER_BUSY: the queue is full; see Retry-After"),
    ))]
pub async fn create(
    State(app): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let too_big = || {
        ApiError::invalid(RequestError {
            field: "request".into(),
            message: format!("the body is larger than {} bytes", app.max_body_bytes),
        })
    };
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_big()
        } else {
            ApiError::invalid(RequestError {
                field: "request".into(),
                message: format!("cannot read the body: {e}"),
            })
        }
    })?;
    if body.len() > app.max_body_bytes {
        return Err(too_big());
    }
    let json = std::str::from_utf8(&body).map_err(|_| {
        ApiError::invalid(RequestError {
            field: "request".into(),
            message: "the body is not UTF-8 text".into(),
        })
    })?;
    let dialect = Dialect::HTTP;
    let obj = request_object(json, &dialect).map_err(ApiError::invalid)?;
    let native = (app.model.native_width, app.model.native_height);
    let params = parse_params(&obj, &dialect, native, rand::random).map_err(ApiError::invalid)?;
    let format = match text(&obj, "format").map_err(ApiError::invalid)? {
        None => Format::default(),
        Some(name) => Format::parse(&name).ok_or_else(|| {
            ApiError::invalid(RequestError {
                field: "format".into(),
                message: format!(
                    "unknown format `{name}`; the formats are {}",
                    Format::NAMES.join(", ")
                ),
            })
        })?,
    };
    match app.jobs.submit(params, format) {
        Ok(state) => Ok((
            StatusCode::CREATED,
            Json(Created {
                id: state.id,
                status: state.status,
                created_at: state.created_at,
            }),
        )),
        Err(Rejected::Busy) => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_BUSY",
                "the queue is full: try again in a few seconds",
            );
            e.retry_after = Some(5);
            Err(e)
        }
        Err(Rejected::Closed) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_BUSY",
            "the server is shutting down",
        )),
    }
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
        (status = 200, content_type = "text/event-stream", body = JobState,
         description = "events `progress`, then `complete` | `error` | `cancelled`, each with the job state"),
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

/// Whether the server is up and whether a job runs or waits.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub async fn health(State(app): Shared) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        busy: app.jobs.busy(),
    })
}

/// The loaded model and the model folders found in the models folder.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = Models)))]
pub async fn models(State(app): Shared) -> Json<Models> {
    Json(Models {
        loaded: app.model.clone(),
        available: app.available.clone(),
    })
}

/// Unknown paths: a JSON 404 like every other error.
pub async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}
