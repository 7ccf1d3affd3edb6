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
    /// `ok`, or `unavailable` while the worker cannot run jobs (see `reason`).
    pub status: String,
    /// A job is running or waiting.
    pub busy: bool,
    /// Where the model runs: `gpu` or `cpu`.
    pub device: String,
    /// Why the worker cannot run jobs now (a lost GPU device, a dead worker) and what the
    /// server does about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One Server-Sent Event of a stream, as a client parses it: its name and its data.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = StreamEvent)]
pub struct StreamEventDoc {
    /// `GET /v1/images/generations/{id}/events`: `progress`, then one of `complete`, `error`,
    /// `cancelled`. `GET /v1/jobs/{id}/stream`: `message` (unnamed: `Step i/n`), then one of
    /// `complete`, `error`, `cancelled`.
    #[schema(pattern = "^(progress|message|complete|error|cancelled)$")]
    pub event: String,
    /// The job's state as JSON (`JobState`; the job API: `Step i/n`, then `JobComplete`,
    /// `JobFailed` or `JobCancelled`).
    pub data: String,
}

/// The loaded model.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub name: String,
    pub native_width: u32,
    pub native_height: u32,
    /// Steps a request without `steps` gets: 20, or a distilled model's own (1 for the turbo
    /// presets, 4 for LCM models).
    pub default_steps: usize,
    /// Guidance a request without one gets: 7.5, or a distilled model's own (0 for the turbo
    /// presets, 8.5 for LCM models).
    pub default_guidance_scale: f32,
    /// Sampler a request without one gets: `euler_a`, or a distilled model's own.
    pub default_sampler: String,
    /// Where the model runs: `gpu` (the WGSL kernels) or `cpu` (the CPU backend).
    pub device: String,
    /// The GPU adapter, or the CPU backend, in one line.
    pub device_description: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Models {
    pub loaded: ModelInfo,
    /// The names that load without a download: the built-in and downloaded presets and the
    /// model folders (diffusers or web format).
    pub available: Vec<String>,
    /// Every model `--model` takes by name: the presets (hub presets downloaded or not, by
    /// the Hugging Face cache), then the model folders of `--models-dir`,
    /// `$DIFFUSION_MODELS_PATH` and `$MODELS_PATH`.
    pub models: Vec<LocalModelInfo>,
}

/// One model of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalModelInfo {
    pub name: String,
    /// `preset`, `diffusers`, `web` or `single-file`.
    pub format: String,
    /// Whether it loads without a download.
    pub downloaded: bool,
    /// A folder's path (its last part only, unless the caller sent the server's API key), or
    /// for a preset `preset `NAME`` and its hub repository.
    pub location: String,
    /// A preset's description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A preset's native size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_height: Option<u32>,
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
    /// Default: the model's native width, or with `initImage` the image's width rounded down
    /// to a multiple of 8 (64 to 2048). A multiple of 8 from 64 to 2048.
    pub width: Option<u32>,
    /// Default: as `width`, from the native or the image's height.
    pub height: Option<u32>,
    /// Default 20, from 1 to 150. With `initImage`, about `steps * strength` of them run.
    pub steps: Option<u32>,
    /// Default 7.5.
    pub cfg_scale: Option<f32>,
    /// Default: random. Image i of a batch uses seed + i.
    pub seed: Option<u64>,
    /// `euler_a` (default), `euler`, `euler_karras`, `ddim`, `dpm++2m`, `dpm++2m_karras`, ...
    /// (an unknown name's error lists them all; A1111 names such as `DPM++ 2M Karras` work too).
    pub sampler: Option<String>,
    /// 1 to 5 (default 1).
    pub count: Option<u32>,
    /// `png` (default), `jpeg` or `webp`.
    pub format: Option<String>,
    /// img2img: the input image, base64 of a PNG, JPEG or WebP file (a `data:image/...;base64,`
    /// URL works too), at most 4096x4096; resized to `width` x `height`.
    pub init_image: Option<String>,
    /// Inpainting (needs `initImage`): the mask, encoded as `initImage`; white = repaint,
    /// black = keep. Any size; resized to `width` x `height`.
    pub mask: Option<String>,
    /// With `initImage`: how much of the image is repainted, from 0 (none) to 1 (all);
    /// default 0.8.
    pub strength: Option<f32>,
}

/// The request body of `POST /v1/images/edits`, `multipart/form-data` (documentation). The
/// text parts are read as the JSON request's fields.
#[derive(Debug, Clone, ToSchema)]
#[allow(dead_code)]
#[schema(as = EditRequest)]
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditRequestDoc {
    /// Required: the input image file, PNG, JPEG or WebP, at most 4096x4096.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
    /// Inpainting: the mask file (white = repaint, black = keep).
    #[schema(value_type = Option<String>, format = Binary)]
    pub mask: Option<Vec<u8>>,
    /// Required.
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Default: the image's width rounded down to a multiple of 8 (64 to 2048).
    pub width: Option<u32>,
    /// Default: the image's height rounded down to a multiple of 8 (64 to 2048).
    pub height: Option<u32>,
    /// Default 20, from 1 to 150; about `steps * strength` of them run.
    pub steps: Option<u32>,
    /// Default 7.5.
    pub cfg_scale: Option<f32>,
    /// Default: random.
    pub seed: Option<u64>,
    /// As in `POST /v1/images/generations` (default `euler_a`).
    pub sampler: Option<String>,
    /// 1 to 5 (default 1).
    pub count: Option<u32>,
    /// From 0 to 1 (default 0.8); 1 repaints from pure noise.
    pub strength: Option<f32>,
    /// `png` (default), `jpeg` or `webp`.
    pub format: Option<String>,
}
