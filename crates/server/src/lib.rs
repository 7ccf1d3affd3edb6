//! The local HTTP API: async generation jobs with progress, a bounded queue, SSE and cancel,
//! shaped as the clients it serves already speak it (`/v1/images/generations`, `/health`),
//! plus img2img and inpainting (`initImage` / `mask` in JSON, or uploads to `/v1/images/edits`).
//!
//! - [`api`]: the wire types (also the OpenAPI document's schemas, [`openapi_json`]).
//! - [`jobs`]: job states by id, cancel flags, the bounded queue, the TTL sweep.
//! - [`worker`]: the one thread that owns the model and runs jobs in order, each under
//!   `catch_unwind` and the job timeout.
//! - [`supervisor`]: restarts the worker after it died or lost the GPU, with a model loaded
//!   anew, and says why the server cannot run jobs meanwhile.
//! - [`guard`]: who may call: the Host and Origin checks, CORS and the API key.
//! - [`connections`]: the accept loop with hyper's header timeout and a connection limit.
//! - [`routes`]: the handlers; they never wait on the GPU.
//! - [`inputs`]: img2img and inpainting inputs (base64 or uploads) decoded and checked.
//! - [`submit`]: what every creating route shares: images decoded, parameters checked, queued.
//! - [`dialects`]: the same queue in other APIs' shapes: the SD worker's job API
//!   (`/v1/jobs`, SSE `Step i/n`) and the diffusers task handler's (`/task`).

pub mod api;
pub mod connections;
pub mod dialects;
pub mod guard;
pub mod inputs;
pub mod jobs;
pub mod routes;
pub mod submit;
pub mod supervisor;
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
    /// A job running longer fails with `JOB_TIMEOUT` (default: none).
    pub job_timeout: Option<Duration>,
    /// Requests must carry `Authorization: Bearer <key>` (all routes but `/health`).
    pub api_key: Option<String>,
    /// Origins (`https://app.example`) whose pages may call the API: they get CORS answers;
    /// writes from any other origin are refused with 403.
    pub cors_origins: Vec<String>,
    /// The limits on connections and their timing.
    pub limits: connections::Limits,
    /// Loads the model anew after the worker died or the GPU was lost; without it, the server
    /// stays unavailable (`/health` 503) until restarted.
    pub reload: Option<Reloader>,
    /// Exit the process (status [`supervisor::EXIT_DEVICE_LOST`]) when the worker dies or the
    /// GPU is lost, for a supervisor to restart it, instead of re-creating the model.
    pub exit_on_device_loss: bool,
    /// Faults the tests inject.
    #[cfg(feature = "test-hooks")]
    pub faults: Arc<Faults>,
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
            job_timeout: None,
            api_key: None,
            cors_origins: Vec::new(),
            limits: connections::Limits::default(),
            reload: None,
            exit_on_device_loss: false,
            #[cfg(feature = "test-hooks")]
            faults: Arc::default(),
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

impl ServerConfig {
    /// The most memory requests can hold at once, besides the model, the finished jobs'
    /// results (kept for `result_ttl`) and the copies of them being written to clients (each
    /// written within `write_timeout`): every place in the queue, the running job's included,
    /// holding a body of `max_image_body_bytes`, its image strings and the JSON parser's
    /// scratch copy of one, then the decoded images (RGB and mask at
    /// [`inputs::MAX_IMAGE_SIDE`]); [`submit::CONCURRENT_DECODES`] decodes with their base64
    /// bytes, the decoder's widest output (16-bit RGBA) and its RGB conversion; and hyper's
    /// read and write buffers on every connection.
    pub fn worst_case_request_memory(&self) -> u64 {
        let side = u64::from(inputs::MAX_IMAGE_SIDE);
        let image_body = self.max_image_body_bytes.max(self.max_body_bytes) as u64;
        let decoded = side * side * (3 + 1);
        let place = 3 * image_body + decoded;
        let decode = image_body * 3 / 4 + side * side * 8 + side * side * 3;
        let places = self.queue_size.max(1) as u64 + 1;
        places * place
            + submit::CONCURRENT_DECODES as u64 * decode
            + self.limits.max_connections as u64 * 2 * connections::MAX_BUFFER_BYTES as u64
    }

    /// Checks the options that can be wrong (the allowed origins, an empty key) before the
    /// model is loaded.
    pub fn check(&self) -> Result<(), ServerError> {
        guard::Access::new(self.api_key.clone(), &self.cors_origins, true).map(drop)
    }

    /// What an operator should hear at start: a non-loopback address without an API key.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.host.is_loopback() && self.api_key.is_none() {
            warnings.push(format!(
                "listening on {} without an API key: anyone who can reach this address can \
                 generate images and read the results; set --api-key (or SD_API_KEY)",
                self.host
            ));
        }
        warnings
    }
}

/// The model the server generates with: the front door's, loaded once.
pub use sd_wgsl::Model;

/// Loads the model anew (after a device loss or a dead worker). Cheap to clone.
#[derive(Clone)]
pub struct Reloader(Arc<dyn Fn() -> Result<Model, String> + Send + Sync>);

impl Reloader {
    /// Wraps a loader; its error says why the model could not be loaded.
    pub fn new(load: impl Fn() -> Result<Model, String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(load))
    }

    /// Loads the model.
    pub fn load(&self) -> Result<Model, String> {
        (self.0)()
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// Faults the tests inject into the worker (compiled only with the `test-hooks` feature,
/// which only this crate's tests turn on). Each fires once, at the next job.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default)]
pub struct Faults {
    /// The next job panics inside its generation.
    pub panic_in_job: std::sync::atomic::AtomicBool,
    /// The worker thread panics before the next job, outside the per-job guard.
    pub kill_worker: std::sync::atomic::AtomicBool,
    /// The model's GPU device is destroyed before the next job (a real device loss: every
    /// later GPU call fails with it).
    pub lose_device: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "test-hooks")]
impl Faults {
    fn take(flag: &std::sync::atomic::AtomicBool) -> bool {
        flag.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn before_job(&self, model: &Model) {
        if Self::take(&self.kill_worker) {
            panic!("injected fault: the worker dies");
        }
        if Self::take(&self.lose_device)
            && let Some(context) = model.pipeline().context()
        {
            context.dispose();
        }
    }

    pub(crate) fn inside_job(&self) {
        if Self::take(&self.panic_in_job) {
            panic!("injected fault: the job panics");
        }
    }
}

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
        api::StreamEventDoc,
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
/// already is not repeated). Without `full_paths`, a folder's location is its last part only.
pub(crate) fn local_models(
    models_dir: Option<&std::path::Path>,
    full_paths: bool,
) -> Vec<api::LocalModelInfo> {
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
            let (preset, location) = match &m.location {
                sd_wgsl::ModelLocation::Preset(preset) => (Some(*preset), m.location.to_string()),
                sd_wgsl::ModelLocation::Path(path) if !full_paths => (
                    None,
                    path.file_name()
                        .map_or_else(|| m.name.clone(), |n| n.to_string_lossy().into_owned()),
                ),
                sd_wgsl::ModelLocation::Path(_) => (None, m.location.to_string()),
            };
            api::LocalModelInfo {
                location,
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

fn router(
    state: Arc<AppState>,
    access: Arc<guard::Access>,
    limits: &connections::Limits,
) -> Router {
    let max_body = state.max_body_bytes;
    // Routes that take images read their bodies themselves, up to `max_image_body_bytes`
    // (and hold the rest of the request to `max_body_bytes`).
    let image_limit = DefaultBodyLimit::disable();
    // The event streams last as long as their job; every other request is answered within
    // `request_timeout` (the handlers never wait on the GPU: only a slow body takes long).
    let streams = Router::new()
        .route("/v1/images/generations/{id}/events", get(routes::events))
        .route("/v1/jobs/{id}/stream", get(jobs_api::stream));
    let timed = Router::new()
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
        // The SD worker's job API.
        .route(
            "/v1/jobs",
            axum::routing::post(jobs_api::create).layer(image_limit),
        )
        .route("/v1/jobs/{id}", get(jobs_api::get).delete(jobs_api::cancel))
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
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    let app = timed
        .merge(streams)
        .fallback(routes::fallback)
        // One byte over the limit is enough to tell; the handlers answer 400 themselves.
        .layer(DefaultBodyLimit::max(max_body + 1))
        // A body that stops arriving fails the read (the handler answers 400).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_idle_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&access),
            guard::guard,
        ))
        .with_state(state);
    match access.cors() {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, cancels (or lets
/// finish) the jobs, and waits for the worker.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    model: Model,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let jobs = Jobs::new(config.queue_size);
    let defaults = model.defaults();
    let access = Arc::new(guard::Access::new(
        config.api_key.clone(),
        &config.cors_origins,
        listener.local_addr()?.ip().is_loopback(),
    )?);
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
        decodes: Arc::new(tokio::sync::Semaphore::new(submit::CONCURRENT_DECODES)),
    });
    let worker_jobs = jobs.store.clone();
    let supervision = supervisor::Supervision {
        reload: config.reload.clone(),
        exit_on_device_loss: config.exit_on_device_loss,
        worker: worker::WorkerOptions {
            job_timeout: config.job_timeout,
            #[cfg(feature = "test-hooks")]
            faults: Arc::clone(&config.faults),
        },
    };
    let worker = std::thread::Builder::new()
        .name("sd-gpu-worker".into())
        .spawn(move || supervisor::supervise(model, &worker_jobs, &supervision))?;
    let sweeper_jobs = jobs.store.clone();
    let (ttl, interval) = (config.result_ttl, config.cleanup_interval);
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        loop {
            tick.tick().await;
            sweeper_jobs.sweep(ttl);
        }
    });
    let app = router(Arc::clone(&state), access, &config.limits);
    // Cancel before the connections drain: an open SSE stream ends with its job.
    let store = jobs.store.clone();
    let cancel_on_shutdown = config.cancel_on_shutdown;
    let shutdown = async move {
        shutdown.await;
        // No job is queued after this; the worker ends when the queue is empty.
        store.shutdown(cancel_on_shutdown);
    };
    // Open connections may finish until `drain_timeout` after the worker has ended (in
    // finish-on-shutdown mode, event streams last as long as their jobs).
    let (worker_store, drain) = (jobs.store.clone(), config.limits.drain_timeout);
    let drained = async move {
        while !worker_store.is_closed() || worker_store.busy() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(drain).await;
    };
    connections::serve(listener, app, &config.limits, shutdown, drained).await;
    sweeper.abort();
    jobs.close();
    drop(state);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    Ok(())
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
        let shutdown = async {
            shutdown_signal().await;
            eprintln!("stopping: waiting for open requests (Ctrl-C again exits at once)");
            // A second signal exits without waiting for anything.
            tokio::spawn(async {
                shutdown_signal().await;
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            });
        };
        serve(listener, config, model, shutdown).await
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

    use super::ServerConfig;

    #[test]
    fn the_memory_bound_is_the_documented_one() {
        // README, "Limits, access and faults".
        let mib = |config: ServerConfig| config.worst_case_request_memory() >> 20;
        assert_eq!(mib(ServerConfig::default()), 1872);
        let small = ServerConfig {
            queue_size: 2,
            ..ServerConfig::default()
        };
        assert_eq!(mib(small), 912);
    }

    #[test]
    fn an_open_address_without_a_key_is_warned_about() {
        assert!(ServerConfig::default().warnings().is_empty());
        let open = ServerConfig {
            host: "0.0.0.0".parse().expect("an address"),
            ..ServerConfig::default()
        };
        assert_eq!(open.warnings().len(), 1, "{:?}", open.warnings());
        let keyed = ServerConfig {
            api_key: Some("k".into()),
            ..open
        };
        assert!(keyed.warnings().is_empty());
    }

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
