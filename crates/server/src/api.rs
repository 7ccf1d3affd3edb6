//! The wire types of the HTTP API, named and shaped as the clients it serves already speak them
//! (genai-electron's `/v1/images/generations`). The handlers and the OpenAPI document both use
//! these types, so the document cannot drift from the server.

use serde::Serialize;
use utoipa::ToSchema;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    InProgress,
    Complete,
    Error,
    Cancelled,
}

impl Status {
    /// Whether the job has ended (its result or error is final).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Complete | Self::Error | Self::Cancelled)
    }

    /// The SSE event name of a final state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Complete => "complete",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// `201` answer to a new job.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    pub id: String,
    /// Always `pending`.
    pub status: Status,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
}

/// Progress of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Steps done of the current image (0 while loading).
    pub current_step: u32,
    pub total_steps: u32,
    /// `loading` (text encoder), `diffusion` or `decoding`.
    pub stage: String,
    /// Of the whole job, 0 to 100.
    pub percentage: f64,
    /// 1-based.
    pub current_image: u32,
    pub total_images: u32,
}

/// One generated image.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The encoded image, base64.
    pub image: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
}

/// A finished job's images.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub images: Vec<Image>,
    /// `png`, `jpeg` or `webp`.
    pub format: String,
    /// Milliseconds from start to finish of the generation.
    pub time_taken: u64,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub message: String,
    /// `INVALID_REQUEST`, `NOT_FOUND`, `SERVER_BUSY`, `BACKEND_ERROR`, `IO_ERROR`.
    pub code: String,
    /// For `INVALID_REQUEST`: the request field (`request` for the body as a whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer: `{ error: { message, code } }`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// A job as `GET /v1/images/generations/{id}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    pub id: String,
    pub status: Status,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the server answers.
    pub status: String,
    /// A job is running or waiting.
    pub busy: bool,
}

/// The loaded model.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub name: String,
    pub native_width: u32,
    pub native_height: u32,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Models {
    pub loaded: ModelInfo,
    /// Model folders found in the models folder (diffusers or web format), by name.
    pub available: Vec<String>,
}

/// The request body of `POST /v1/images/generations` (documentation; the handler reads the
/// JSON field by field to name a bad field in its error).
#[derive(Debug, Clone, ToSchema)]
#[allow(dead_code)]
#[schema(as = GenerationRequest)]
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationRequestDoc {
    /// Required.
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Default: the model's native width. A multiple of 8 from 64 to 2048.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Default 20, from 1 to 150.
    pub steps: Option<u32>,
    /// Default 7.5.
    pub cfg_scale: Option<f32>,
    /// Default: random. Image i of a batch uses seed + i.
    pub seed: Option<u64>,
    /// `euler_a` (default), `euler`, `euler_karras`, `ddim`, `dpmpp_2m`, `dpmpp_2m_karras`.
    pub sampler: Option<String>,
    /// 1 to 5 (default 1).
    pub count: Option<u32>,
    /// `png` (default), `jpeg` or `webp`.
    pub format: Option<String>,
}
