//! The diffusers task handler's API (`shared/reference/diffusers-task-handler.md`), on the same
//! job queue as `/v1/images/generations`:
//!
//! - `POST /task` with `{"task_type": "text-to-image", "params": {"provider", "model_id",
//!   "prompt", "negative_prompt", "steps", "guidance_scale", "seed"}}` answers
//!   `200 {"task_id", "status": "pending"}`. Defaults as the document gives them: 30 steps,
//!   guidance 7.5.
//! - `GET /task/{task_id}`: `{"task_id", "task_type", "status", "progress": {"step", "total",
//!   "percentage"}, "result": {"images": [base64 PNG], "seed", "width", "height"}, "error"}`.
//! - `DELETE /task/{task_id}` cancels.
//!
//! The handler is a FastAPI service, so errors are FastAPI's: `422 {"detail": [{"loc",
//! "msg", "type"}]}` for a bad request, `404 {"detail": "Task not found"}`, `503 {"detail"}`
//! when the queue is full.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sd_core::request::RequestError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{SNAKE_CASE, to_common, to_snake};
use crate::api::Status;
use crate::jobs::{JobInfo, uuid_v4};
use crate::routes::{Shared, read_limited};
use crate::submit::{self, BUSY_MESSAGE, CLOSED_MESSAGE, Intake, Refused};
use sd_wgsl::ImageFormat as Format;

/// The only task type.
pub const TEXT_TO_IMAGE: &str = "text-to-image";
/// The only provider.
pub const PROVIDER: &str = "diffusers";
/// The document's defaults (the other routes default to 20 steps).
pub const DEFAULT_STEPS: u32 = 30;
pub const DEFAULT_GUIDANCE_SCALE: f64 = 7.5;

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

/// The request body of `POST /task` (documentation; the handler reads the JSON key by key to
/// name a bad one in its error). Unknown keys are refused.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)]
#[schema(as = TaskRequest)]
pub struct TaskRequestDoc {
    /// Must be `text-to-image`.
    #[schema(pattern = "^text-to-image$")]
    pub task_type: String,
    pub params: TaskParamsDoc,
}

/// The parameters of a `text-to-image` task.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)]
#[schema(as = TaskParams)]
pub struct TaskParamsDoc {
    /// `diffusers` if given.
    #[schema(pattern = "^diffusers$")]
    pub provider: Option<String>,
    /// If given, the loaded model's name (`GET /v1/models`); this server runs one model.
    pub model_id: Option<String>,
    /// Required.
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Default 30, from 1 to 150.
    pub steps: Option<u32>,
    /// Default 7.5.
    pub guidance_scale: Option<f32>,
    /// Default: random.
    pub seed: Option<u64>,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl From<Status> for TaskStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Pending => Self::Pending,
            Status::InProgress => Self::Running,
            Status::Complete => Self::Completed,
            Status::Error => Self::Failed,
            Status::Cancelled => Self::Cancelled,
        }
    }
}

/// `200` answer to `POST /task`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskCreated {
    pub task_id: String,
    /// Always `pending`.
    pub status: TaskStatus,
}

/// How far a task is.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskProgress {
    /// Diffusion steps done (where it stopped, for a cancelled or failed task).
    pub step: u32,
    /// Diffusion steps of the task.
    pub total: u32,
    /// Of the whole task (prompt encoding, steps, decoding), 0 to 100.
    pub percentage: f64,
}

/// A completed task's output.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskResult {
    /// PNG files, base64.
    pub images: Vec<String>,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
}

/// A task as `GET` and `DELETE /task/{task_id}` show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskState {
    pub task_id: String,
    /// `text-to-image`.
    pub task_type: String,
    pub status: TaskStatus,
    pub progress: TaskProgress,
    /// When `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// When `failed`: what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// FastAPI's answer to a request that does not validate (`422`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = HTTPValidationError)]
pub struct ValidationErrors {
    pub detail: Vec<ValidationError>,
}

/// One fault of a request, as FastAPI (pydantic) reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ValidationError {
    /// Where: `["body", "params", "steps"]`.
    pub loc: Vec<String>,
    /// What is wrong and what is allowed.
    pub msg: String,
    /// `missing`, `extra_forbidden`, `json_invalid` or `value_error`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// FastAPI's other errors: `{"detail": "Task not found"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskError {
    pub detail: String,
}

/// An error answer of this dialect.
#[derive(Debug)]
pub enum TaskApiError {
    /// `422` with one fault.
    Invalid(ValidationError),
    /// Any other status with a `detail` text.
    Detail(StatusCode, String),
}

impl TaskApiError {
    fn invalid(loc: &[&str], kind: &str, msg: impl Into<String>) -> Self {
        Self::Invalid(ValidationError {
            loc: loc.iter().map(|s| (*s).to_owned()).collect(),
            msg: msg.into(),
            kind: kind.into(),
        })
    }

    fn not_found() -> Self {
        Self::Detail(StatusCode::NOT_FOUND, "Task not found".into())
    }

    /// A job not queued.
    fn refused(refused: Refused) -> Self {
        match refused {
            Refused::Invalid(e) => Self::in_params(&e),
            Refused::Busy => Self::Detail(StatusCode::SERVICE_UNAVAILABLE, BUSY_MESSAGE.into()),
            Refused::Closed => Self::Detail(StatusCode::SERVICE_UNAVAILABLE, CLOSED_MESSAGE.into()),
            Refused::Unavailable(reason) => Self::Detail(StatusCode::SERVICE_UNAVAILABLE, reason),
            Refused::Internal(message) => Self::Detail(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }

    /// The shared parser's error about a parameter.
    fn in_params(e: &RequestError) -> Self {
        let field = to_snake(&e.field);
        if e.message == "is required" {
            Self::invalid(&["body", "params", field], "missing", "Field required")
        } else {
            Self::invalid(&["body", "params", field], "value_error", e.message.clone())
        }
    }
}

impl IntoResponse for TaskApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Invalid(error) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(ValidationErrors {
                    detail: vec![error],
                }),
            )
                .into_response(),
            Self::Detail(status, detail) => {
                let mut response = (status, Json(TaskError { detail })).into_response();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(5u32));
                }
                response
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the request
// ---------------------------------------------------------------------------------------------

const TOP_KEYS: [&str; 2] = ["task_type", "params"];
const PARAM_KEYS: [&str; 7] = [
    "provider",
    "model_id",
    "prompt",
    "negative_prompt",
    "steps",
    "guidance_scale",
    "seed",
];

/// The parameters of a `POST /task` body in the shared parser's keys, with the document's
/// defaults filled in (`model`: the loaded model's name, the only `model_id` allowed).
pub fn read_task(body: &[u8], model: &str) -> Result<Map<String, Value>, TaskApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        TaskApiError::invalid(&["body"], "json_invalid", format!("JSON decode error: {e}"))
    })?;
    let Value::Object(mut top) = value else {
        return Err(TaskApiError::invalid(
            &["body"],
            "value_error",
            r#"must be a JSON object: {"task_type": "text-to-image", "params": {...}}"#,
        ));
    };
    if let Some(key) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
        return Err(TaskApiError::invalid(
            &["body", key.as_str()],
            "extra_forbidden",
            format!(
                "Extra inputs are not permitted; the keys are {}",
                TOP_KEYS.join(", ")
            ),
        ));
    }
    match top.get("task_type") {
        None | Some(Value::Null) => {
            return Err(TaskApiError::invalid(
                &["body", "task_type"],
                "missing",
                "Field required",
            ));
        }
        Some(Value::String(t)) if t == TEXT_TO_IMAGE => {}
        Some(other) => {
            return Err(TaskApiError::invalid(
                &["body", "task_type"],
                "value_error",
                format!("must be `{TEXT_TO_IMAGE}` (the only task type), got {other}"),
            ));
        }
    }
    let mut params = match top.remove("params") {
        None | Some(Value::Null) => {
            return Err(TaskApiError::invalid(
                &["body", "params"],
                "missing",
                "Field required",
            ));
        }
        Some(Value::Object(params)) => params,
        Some(other) => {
            return Err(TaskApiError::invalid(
                &["body", "params"],
                "value_error",
                format!("must be an object, got {other}"),
            ));
        }
    };
    if let Some(key) = params.keys().find(|k| !PARAM_KEYS.contains(&k.as_str())) {
        return Err(TaskApiError::invalid(
            &["body", "params", key.as_str()],
            "extra_forbidden",
            format!(
                "Extra inputs are not permitted; the parameters are {}",
                PARAM_KEYS.join(", ")
            ),
        ));
    }
    match params.remove("provider") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p == PROVIDER => {}
        Some(other) => {
            return Err(TaskApiError::invalid(
                &["body", "params", "provider"],
                "value_error",
                format!("must be `{PROVIDER}` (the only provider this server runs), got {other}"),
            ));
        }
    }
    match params.remove("model_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) if id == model => {}
        Some(other) => {
            return Err(TaskApiError::invalid(
                &["body", "params", "model_id"],
                "value_error",
                format!(
                    "model {other} is not loaded: this server runs `{model}`; leave model_id out \
                     or give that name"
                ),
            ));
        }
    }
    for (key, default) in [
        ("steps", Value::from(DEFAULT_STEPS)),
        ("guidance_scale", Value::from(DEFAULT_GUIDANCE_SCALE)),
    ] {
        if params.get(key).is_none_or(Value::is_null) {
            params.insert(key.into(), default);
        }
    }
    Ok(params
        .into_iter()
        .map(|(key, value)| (to_common(&key).to_owned(), value))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

fn state_of(info: &JobInfo) -> TaskState {
    let state = &info.state;
    let status = TaskStatus::from(state.status);
    let progress = match (status, &info.last_progress) {
        (TaskStatus::Completed, last) => {
            let total = last.as_ref().map_or(info.steps, |p| p.total_steps);
            TaskProgress {
                step: total,
                total,
                percentage: 100.0,
            }
        }
        (_, Some(p)) => TaskProgress {
            step: p.current_step,
            total: p.total_steps,
            percentage: p.percentage,
        },
        (_, None) => TaskProgress {
            step: 0,
            total: info.steps,
            percentage: 0.0,
        },
    };
    let result = state.result.as_ref().and_then(|result| {
        let first = result.images.first()?;
        Some(TaskResult {
            images: result.images.iter().map(|i| i.image.clone()).collect(),
            seed: first.seed,
            width: first.width,
            height: first.height,
        })
    });
    TaskState {
        task_id: state.id.clone(),
        task_type: TEXT_TO_IMAGE.into(),
        status,
        progress,
        result,
        error: state.error.as_ref().map(|e| e.message.clone()),
    }
}

/// Queues a `text-to-image` task; answers at once. Poll `GET /task/{task_id}`.
#[utoipa::path(post, path = "/task", operation_id = "task_create", tag = "Diffusers task API",
    request_body = TaskRequestDoc,
    responses(
        (status = 200, body = TaskCreated),
        (status = 422, body = ValidationErrors, description = "A bad request; `loc` names the field"),
        (status = 503, body = TaskError, description = "The queue is full"),
    ))]
pub async fn create(State(app): Shared, body: Body) -> Result<Json<TaskCreated>, TaskApiError> {
    let (place, body) = submit::reserve(&app, body)
        .await
        .map_err(TaskApiError::refused)?;
    let body = read_limited(body, app.max_body_bytes)
        .await
        .map_err(|e| TaskApiError::invalid(&["body"], "value_error", e.message))?;
    let obj = read_task(&body, &app.model.name)?;
    let intake = Intake {
        obj,
        dialect: SNAKE_CASE,
        image_field: "image",
        image: None,
        mask: None,
        format: Format::Png,
        id: Some(uuid_v4()),
    };
    let state = submit::submit(&app, place, intake)
        .await
        .map_err(TaskApiError::refused)?;
    Ok(Json(TaskCreated {
        task_id: state.id,
        status: state.status.into(),
    }))
}

/// A task's status and progress; its images once `completed`.
#[utoipa::path(get, path = "/task/{task_id}", operation_id = "task_get", tag = "Diffusers task API",
    params(("task_id" = String, Path, description = "The `task_id` `POST /task` returned")),
    responses((status = 200, body = TaskState), (status = 404, body = TaskError)))]
pub async fn get(
    State(app): Shared,
    Path(task_id): Path<String>,
) -> Result<Json<TaskState>, TaskApiError> {
    app.jobs
        .info(&task_id)
        .map(|info| Json(state_of(&info)))
        .ok_or_else(TaskApiError::not_found)
}

/// Cancels a pending or running task (a running one stops within one step). Answers the
/// task after the request.
#[utoipa::path(delete, path = "/task/{task_id}", operation_id = "task_cancel", tag = "Diffusers task API",
    params(("task_id" = String, Path, description = "The `task_id` `POST /task` returned")),
    responses((status = 200, body = TaskState), (status = 404, body = TaskError)))]
pub async fn cancel(
    State(app): Shared,
    Path(task_id): Path<String>,
) -> Result<Json<TaskState>, TaskApiError> {
    app.jobs
        .cancel(&task_id)
        .ok_or_else(TaskApiError::not_found)?;
    app.jobs
        .info(&task_id)
        .map(|info| Json(state_of(&info)))
        .ok_or_else(TaskApiError::not_found)
}
