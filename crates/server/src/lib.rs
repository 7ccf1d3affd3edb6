//! The local HTTP API: async generation jobs with progress, a bounded queue, SSE and cancel,
//! shaped as the clients it serves already speak it (`/v1/images/generations`, `/health`),
//! plus img2img and inpainting (`initImage` / `mask` in JSON, or uploads to `/v1/images/edits`).
//!
//! - [`api`]: the wire types (also the OpenAPI document's schemas, [`openapi_json`]).
//! - [`jobs`]: job states by id, cancel flags, the bounded queue, the TTL sweep.
//! - [`worker`]: the one thread that owns the model and runs jobs in order.
//! - [`routes`]: the handlers; they never wait on the GPU.
//! - [`inputs`]: img2img and inpainting inputs (base64 or uploads) decoded and checked.
//! - [`submit`]: what every creating route shares: images decoded, parameters checked, queued.
//! - [`dialects`]: the same queue in other APIs' shapes: the SD worker's job API
//!   (`/v1/jobs`, SSE `Step i/n`) and the diffusers task handler's (`/task`).

pub mod api;
pub mod dialects;
pub mod inputs;
pub mod jobs;
pub mod routes;
pub mod submit;
pub mod worker;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use utoipa::OpenApi;

use crate::api::ModelInfo;
use crate::dialects::{jobs_api, task_api};
use crate::jobs::Jobs;
use crate::routes::AppState;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Default 127.0.0.1: only this machine.
    pub host: IpAddr,
    /// Default 8081; 0 picks a free port.
    pub port: u16,
    /// Jobs that may wait behind the running one (default 8); more get `503 SERVER_BUSY`.
    pub queue_size: usize,
    /// How long finished jobs are kept (`IMAGE_RESULT_TTL_MS`, default 300000).
    pub result_ttl: Duration,
    /// How often they are swept (`IMAGE_CLEANUP_INTERVAL_MS`, default 60000).
    pub cleanup_interval: Duration,
    /// The largest request body besides its images (default 64 KiB).
    pub max_body_bytes: usize,
    /// The largest request body carrying images: a JSON request with `initImage` / `mask`, or
    /// an upload to `/v1/images/edits` (default 32 MiB).
    pub max_image_body_bytes: usize,
    /// A folder of model folders `GET /v1/models` lists too, after those of
    /// `$DIFFUSION_MODELS_PATH` and `$MODELS_PATH`.
    pub models_dir: Option<PathBuf>,
    /// On shutdown, cancel running and waiting jobs (default) instead of finishing them.
    pub cancel_on_shutdown: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8081,
            queue_size: 8,
            result_ttl: Duration::from_millis(300_000),
            cleanup_interval: Duration::from_millis(60_000),
            max_body_bytes: 64 << 10,
            max_image_body_bytes: 32 << 20,
            models_dir: None,
            cancel_on_shutdown: true,
        }
    }
}

impl ServerConfig {
    /// Reads `IMAGE_RESULT_TTL_MS` and `IMAGE_CLEANUP_INTERVAL_MS`.
    pub fn with_env(mut self) -> Result<Self, ServerError> {
        for (var, slot) in [
            ("IMAGE_RESULT_TTL_MS", &mut self.result_ttl),
            ("IMAGE_CLEANUP_INTERVAL_MS", &mut self.cleanup_interval),
        ] {
            if let Ok(value) = std::env::var(var) {
                let ms: u64 = value.trim().parse().map_err(|_| {
                    ServerError::Config(format!("{var}={value:?}: expected milliseconds"))
                })?;
                *slot = Duration::from_millis(ms.max(1));
            }
        }
        Ok(self)
    }
}

/// The model the server generates with: the front door's, loaded once.
pub use sd_wgsl::Model;

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The OpenAPI document, from the handlers' own types.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "sd-wgsl local HTTP API",
        description = "Async image generation jobs with progress, SSE and cancel, in three \
                       dialects on one queue: genai-electron's `/v1/images/*`, the SD worker's \
                       job API (`/v1/jobs`) and the diffusers task handler's (`/task`)."
    ),
    paths(
        routes::create,
        routes::edit,
        routes::get,
        routes::cancel,
        routes::events,
        routes::health,
        routes::models,
        jobs_api::create,
        jobs_api::get,
        jobs_api::cancel,
        jobs_api::stream,
        task_api::create,
        task_api::get,
        task_api::cancel
    ),
    components(schemas(
        api::GenerationRequestDoc,
        api::EditRequestDoc,
        api::Created,
        api::JobState,
        api::Status,
        api::Progress,
        api::JobResult,
        api::Image,
        api::ErrorResponse,
        api::ErrorBody,
        api::Health,
        api::Models,
        api::ModelInfo,
        api::LocalModelInfo,
        jobs_api::JobRequestDoc,
        jobs_api::JobOperationDoc,
        jobs_api::OperationType,
        jobs_api::JobSubmitted,
        jobs_api::JobStatus,
        jobs_api::JobStep,
        jobs_api::JobImage,
        jobs_api::JobComplete,
        jobs_api::JobFailed,
        jobs_api::JobCancelled,
        task_api::TaskRequestDoc,
        task_api::TaskParamsDoc,
        task_api::TaskCreated,
        task_api::TaskStatus,
        task_api::TaskState,
        task_api::TaskProgress,
        task_api::TaskResult,
        task_api::ValidationErrors,
        task_api::ValidationError,
        task_api::TaskError
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// The models that load by name ([`sd_wgsl::list_models`] of the environment), with the
/// model folders directly under `models_dir` after the environment's folders (a name listed
/// already is not repeated).
pub(crate) fn local_models(models_dir: Option<&std::path::Path>) -> Vec<api::LocalModelInfo> {
    let hub = sd_wgsl::HubConfig::from_env();
    let mut models = sd_wgsl::list_models_with(&sd_wgsl::ModelPaths::from_env(), &hub);
    if let Some(dir) = models_dir {
        let extra = sd_wgsl::ModelPaths {
            diffusion_models: Some(dir.to_path_buf()),
            models: None,
        };
        for model in sd_wgsl::list_models_with(&extra, &hub) {
            if !models.iter().any(|m| m.name == model.name) {
                models.push(model);
            }
        }
    }
    models
        .into_iter()
        .map(|m| {
            let preset = match &m.location {
                sd_wgsl::ModelLocation::Preset(preset) => Some(*preset),
                sd_wgsl::ModelLocation::Path(_) => None,
            };
            api::LocalModelInfo {
                location: m.location.to_string(),
                name: m.name,
                format: m.format.into(),
                downloaded: m.downloaded,
                description: preset.map(|p| p.description.into()),
                native_width: preset.map(|p| p.native_size.0),
                native_height: preset.map(|p| p.native_size.1),
            }
        })
        .collect()
}

fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body_bytes;
    // Routes that take images read their bodies themselves, up to `max_image_body_bytes`
    // (and hold the rest of the request to `max_body_bytes`).
    let image_limit = DefaultBodyLimit::disable();
    Router::new()
        .route(
            "/v1/images/generations",
            axum::routing::post(routes::create).layer(image_limit),
        )
        .route(
            "/v1/images/edits",
            axum::routing::post(routes::edit).layer(image_limit),
        )
        .route(
            "/v1/images/generations/{id}",
            get(routes::get).delete(routes::cancel),
        )
        .route("/v1/images/generations/{id}/events", get(routes::events))
        // The SD worker's job API.
        .route(
            "/v1/jobs",
            axum::routing::post(jobs_api::create).layer(image_limit),
        )
        .route("/v1/jobs/{id}", get(jobs_api::get).delete(jobs_api::cancel))
        .route("/v1/jobs/{id}/stream", get(jobs_api::stream))
        // The diffusers task handler's API.
        .route("/task", axum::routing::post(task_api::create))
        .route(
            "/task/{task_id}",
            get(task_api::get).delete(task_api::cancel),
        )
        .route("/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi_json(),
                )
            }),
        )
        .fallback(routes::fallback)
        // One byte over the limit is enough to tell; the handlers answer 400 themselves.
        .layer(DefaultBodyLimit::max(max_body + 1))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, cancels (or lets
/// finish) the jobs, and waits for the worker.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    model: Model,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (jobs, queue) = Jobs::new(config.queue_size);
    let defaults = model.defaults();
    let state = Arc::new(AppState {
        jobs: jobs.clone(),
        model: ModelInfo {
            name: model.name().to_string(),
            native_width: defaults.width,
            native_height: defaults.height,
            default_steps: defaults.steps,
            default_guidance_scale: defaults.guidance_scale,
            default_sampler: defaults.sampler.name().into(),
            device: model.device().as_str().into(),
            device_description: model.device_description(),
        },
        defaults,
        models_dir: config.models_dir.clone(),
        max_body_bytes: config.max_body_bytes,
        max_image_body_bytes: config.max_image_body_bytes.max(config.max_body_bytes),
    });
    let worker_jobs = jobs.store.clone();
    let worker = std::thread::Builder::new()
        .name("sd-gpu-worker".into())
        .spawn(move || worker::run(&model, &worker_jobs, queue))?;
    let sweeper_jobs = jobs.store.clone();
    let (ttl, interval) = (config.result_ttl, config.cleanup_interval);
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            sweeper_jobs.sweep(ttl);
        }
    });
    let app = router(Arc::clone(&state));
    // Cancel before the connections drain: an open SSE stream ends with its job.
    let store = jobs.store.clone();
    let cancel_on_shutdown = config.cancel_on_shutdown;
    let shutdown = async move {
        shutdown.await;
        if cancel_on_shutdown {
            store.cancel_all();
        }
    };
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    // The worker ends when every queue sender is gone: the state's and ours.
    drop(state);
    drop(jobs);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    Ok(result?)
}

/// Binds `config.host:config.port`.
pub async fn bind(config: &ServerConfig) -> Result<tokio::net::TcpListener, ServerError> {
    let addr = SocketAddr::new(config.host, config.port);
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves until Ctrl-C or SIGTERM (the CLI's `serve`). `on_ready` hears the bound address.
pub fn run_until_signal(
    config: ServerConfig,
    model: Model,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = bind(&config).await?;
        on_ready(listener.local_addr()?);
        serve(listener, config, model, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A server on its own threads, for tests and embedding.
#[derive(Debug)]
pub struct BackgroundServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServerError>>>,
}

/// Starts a server in the background; returns once it listens.
pub fn start_background(
    config: ServerConfig,
    model: Model,
) -> Result<BackgroundServer, ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(bind(&config))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sd-http".into())
        .spawn(move || {
            runtime.block_on(serve(listener, config, model, async {
                let _ = stopped.await;
            }))
        })?;
    Ok(BackgroundServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl BackgroundServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it and waits until it has.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    #[test]
    fn openapi_documents_the_image_inputs() {
        let doc: Value = serde_json::from_str(&super::openapi_json()).expect("JSON");
        let schemas = &doc["components"]["schemas"];
        for field in ["initImage", "mask", "strength"] {
            assert!(
                schemas["GenerationRequest"]["properties"][field].is_object(),
                "GenerationRequest.{field}: {}",
                schemas["GenerationRequest"]
            );
        }
        let edit = &schemas["EditRequest"];
        assert_eq!(edit["properties"]["image"]["format"], "binary", "{edit}");
        let required: Vec<&str> = edit["required"]
            .as_array()
            .expect("required parts")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["image", "prompt"], "{edit}");
        let body = &doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"];
        assert_eq!(
            body["multipart/form-data"]["schema"]["$ref"], "#/components/schemas/EditRequest",
            "{body}"
        );
    }

    #[test]
    fn openapi_documents_the_dialects() {
        let doc: Value = serde_json::from_str(&super::openapi_json()).expect("JSON");
        let schemas = &doc["components"]["schemas"];
        for (schema, fields) in [
            ("JobRequest", &["operation"][..]),
            (
                "JobOperation",
                &["type", "prompt", "guidance_scale", "image", "strength"][..],
            ),
            ("JobSubmitted", &["job_id", "stream_url"][..]),
            ("JobComplete", &["job_id", "images"][..]),
            ("TaskRequest", &["task_type", "params"][..]),
            ("TaskParams", &["provider", "model_id", "steps"][..]),
            (
                "TaskState",
                &["task_id", "status", "progress", "result"][..],
            ),
            ("HTTPValidationError", &["detail"][..]),
            ("ValidationError", &["loc", "msg", "type"][..]),
        ] {
            for field in fields {
                assert!(
                    schemas[schema]["properties"][field].is_object(),
                    "{schema}.{field}: {}",
                    schemas[schema]
                );
            }
        }
        let stream = &doc["paths"]["/v1/jobs/{id}/stream"]["get"]["responses"]["200"]["content"];
        assert!(stream["text/event-stream"].is_object(), "{stream}");
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|path| path.as_object().expect("methods").values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "operationIds must be unique: {ids:?}");
        let task = &doc["paths"]["/task"]["post"]["responses"];
        assert_eq!(
            task["422"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/HTTPValidationError",
            "{task}"
        );
    }
}
