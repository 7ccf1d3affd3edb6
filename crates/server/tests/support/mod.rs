//! What the HTTP API tests share (`api.rs`, `dialects.rs`): a server on an ephemeral port
//! with the embedded f16 digits model, a blocking client, reading JSON replies and event
//! streams, decoding result images, the fixtures' input image and judge.
//!
//! The server's model runs on the CPU backend ([`TestServer::start`]): these tests are about
//! the HTTP API, which is the same code whatever runs the networks, and the CPU backend
//! generates the digits model ~20x faster than lavapipe (the WGSL path is proven against
//! diffusers in `crates/models/tests`). The tests whose subject is a job *while it runs*
//! (cancel within a step, a full queue behind a running job, shutdown) use
//! [`TestServer::start_on_gpu`]: there a step takes about a second, so the running job is
//! still running when the test acts, and it is cancelled after a few steps.
//!
//! The tests take the machine one at a time (a [`TestServer`] holds a lock while it lives): the
//! timings checked (`/health` latency, cancel within a step) mean nothing while another
//! test's generation shares the few cores.

#![allow(dead_code)] // each test binary uses its own part

pub use sd_test_support::judge;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use sd_kernels::{ContextOptions, GpuContext};
use sd_models::ModelSource;
use sd_server::{BackgroundServer, Model, ServerConfig, start_background};
use serde_json::Value;

pub const MODEL_NAME: &str = "tiny-sd-digits";
/// How often the tests poll.
pub const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// One GPU context for the whole test binary; each server loads the model onto it (~1 s).
pub fn gpu() -> Arc<GpuContext> {
    static GPU: OnceLock<Arc<GpuContext>> = OnceLock::new();
    GPU.get_or_init(|| {
        let options =
            ContextOptions::for_tests().expect("GPU context options from the environment");
        Arc::new(
            pollster::block_on(GpuContext::new(options))
                .expect("a GPU context (lavapipe's software Vulkan without a GPU)"),
        )
    })
    .clone()
}

fn embedded_model() -> ModelSource {
    ModelSource::folder(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sd/model"))
}

/// The embedded f16 digits model (`crates/sd/model`) on the CPU backend.
pub fn load_model() -> Model {
    Model::from_source_on(
        &embedded_model(),
        MODEL_NAME,
        &sd_wgsl::LoadOptions::new().device(sd_wgsl::Device::Cpu),
        &mut |_| {},
    )
    .expect("load the embedded digits model on the CPU")
}

/// The embedded f16 digits model on the test binary's GPU context.
pub fn load_gpu_model() -> Model {
    Model::from_source(
        gpu(),
        &embedded_model(),
        MODEL_NAME,
        &sd_wgsl::LoadOptions::new(),
    )
    .expect("load the embedded digits model on the GPU")
}

/// The defaults on an ephemeral port, cancelling what runs when the test ends.
pub fn config() -> ServerConfig {
    ServerConfig {
        port: 0,
        cancel_on_shutdown: true,
        ..ServerConfig::default()
    }
}

pub fn client(timeout: Duration) -> Client {
    Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

/// A running server and a client for it; shut down when dropped.
pub struct TestServer {
    pub server: Option<BackgroundServer>,
    pub base: String,
    pub client: Client,
    /// Released after the server has shut down (fields drop after `Drop::drop`).
    _turn: MutexGuard<'static, ()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl TestServer {
    /// A server with the digits model on the CPU backend.
    pub fn start(config: ServerConfig) -> Self {
        Self::start_with(config, load_model)
    }

    /// A server with the digits model on the GPU (lavapipe here): for tests that act on a
    /// running job, which a step of about a second keeps running.
    pub fn start_on_gpu(config: ServerConfig) -> Self {
        Self::start_with(config, load_gpu_model)
    }

    /// [`TestServer::start`] with the model `model` loads (once the turn is taken).
    pub fn start_with(config: ServerConfig, model: impl FnOnce() -> Model) -> Self {
        static TURN: Mutex<()> = Mutex::new(());
        // A failed test poisons the lock; the next one still gets its turn.
        let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        let server = start_background(config, model()).expect("start the server");
        let base = format!("http://{}", server.addr());
        Self {
            server: Some(server),
            base,
            client: client(Duration::from_secs(60)),
            _turn: turn,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POSTs raw bytes as JSON.
    pub fn post_to(&self, path: &str, body: impl Into<Vec<u8>>) -> Response {
        self.client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub fn delete_at(&self, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .send()
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
    }

    /// `/health`, checked: 200 `{status: "ok", busy}`; `busy` and how long it took.
    pub fn health(&self) -> (bool, Duration) {
        let start = Instant::now();
        let (status, health) = json_of(self.get("/health"));
        let took = start.elapsed();
        assert_eq!(status, StatusCode::OK, "/health: {health}");
        assert_eq!(health["status"], "ok", "/health: {health}");
        let busy = health["busy"]
            .as_bool()
            .unwrap_or_else(|| panic!("/health `busy` should be a boolean: {health}"));
        (busy, took)
    }

    /// Waits until the worker is idle; how long that took.
    pub fn wait_idle(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        while self.health().0 {
            assert!(
                start.elapsed() < timeout,
                "/health still busy after {timeout:?}"
            );
            thread::sleep(POLL);
        }
        start.elapsed()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading replies
// ---------------------------------------------------------------------------------------------

/// Status and JSON body of a reply (a body that is not JSON fails the test).
pub fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let url = response.url().to_string();
    let text = response
        .text()
        .unwrap_or_else(|e| panic!("{url}: reading the body: {e}"));
    let value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{url} answered {status} with a body that is not JSON ({e}): {text:?}")
    });
    (status, value)
}

/// A JSON value for messages: base64 images (long strings without spaces) shortened.
pub fn brief(value: &Value) -> String {
    fn shorten(value: &mut Value) {
        match value {
            Value::String(s) if s.len() > 200 && !s.contains(' ') => {
                *s = format!("<{} base64 chars>", s.len());
            }
            Value::Array(items) => items.iter_mut().for_each(shorten),
            Value::Object(fields) => fields.values_mut().for_each(shorten),
            _ => {}
        }
    }
    let mut value = value.clone();
    shorten(&mut value);
    value.to_string()
}

/// Base64 text to bytes.
pub fn base64_bytes(text: &str) -> Vec<u8> {
    BASE64.decode(text).expect("the image is valid base64")
}

/// Bytes to base64 text.
pub fn base64_text(bytes: impl AsRef<[u8]>) -> String {
    BASE64.encode(bytes)
}

/// A result image's bytes (`{"image": "<base64>", ...}`).
pub fn image_bytes(image: &Value) -> Vec<u8> {
    base64_bytes(
        image["image"]
            .as_str()
            .expect("the image is a base64 string"),
    )
}

/// An 8-bit RGB(A) PNG from memory: (RGB bytes, width, height).
pub fn png_rgb(bytes: &[u8]) -> (Vec<u8>, usize, usize) {
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG (starts {:02x?})",
        &bytes[..bytes.len().min(8)]
    );
    judge::decode_png_rgb(bytes, "the result image")
}

/// The input of the img2img and inpainting tests: a red 7 on blue, 64x64 PNG.
pub fn input_png() -> Vec<u8> {
    let path =
        sd_test_support::fixtures().join("tiny-sd-digits-refs/more_refs_png/img2img_input.png");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

/// One event as sent: its name (`message` when unnamed) and its data lines joined.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Reads an event stream until the server ends it (a stream that never ends fails on the
/// client's timeout).
pub fn read_sse(client: &Client, url: &str) -> Vec<SseEvent> {
    let response = client
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{url}: Content-Type {content_type:?}"
    );
    let mut events = Vec::new();
    let (mut name, mut data) = (String::new(), Vec::<String>::new());
    for line in BufReader::new(response).lines() {
        let line = line.unwrap_or_else(|e| {
            let names: Vec<&str> = events.iter().map(|e: &SseEvent| e.name.as_str()).collect();
            panic!("{url}: the stream broke off or did not end ({e}); events so far: {names:?}")
        });
        if line.is_empty() {
            if !data.is_empty() {
                let name = if name.is_empty() {
                    "message".into()
                } else {
                    name.clone()
                };
                events.push(SseEvent {
                    name,
                    data: data.join("\n"),
                });
            }
            name.clear();
            data.clear();
            continue;
        }
        if line.starts_with(':') {
            continue; // a comment (keep-alive)
        }
        let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_owned(),
            "data" => data.push(value.to_owned()),
            _ => {} // id, retry
        }
    }
    assert!(
        data.is_empty(),
        "{url}: the stream ended inside an event (no blank line after `data:`)"
    );
    events
}

/// Fetches a state until `done` says so (every state seen goes through `done`), failing with
/// the last one after `timeout`.
pub fn poll_until(
    label: &str,
    timeout: Duration,
    what: &str,
    mut fetch: impl FnMut() -> Value,
    done: &mut dyn FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let state = fetch();
        if done(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: not {what} within {timeout:?}; last state: {}",
            brief(&state)
        );
        thread::sleep(POLL);
    }
}

/// What is wrong with a reply that must be `400 {"error": {"code": "INVALID_REQUEST", "field":
/// field, "message": "<field>: ..."}}` whose message says `word` (empty when it is right).
pub fn invalid_request_problems(
    status: StatusCode,
    reply: &Value,
    field: &str,
    word: Option<&str>,
) -> Vec<String> {
    let error = &reply["error"];
    let message = error["message"].as_str().unwrap_or("");
    let mut wrong = Vec::new();
    if status != StatusCode::BAD_REQUEST {
        wrong.push(format!("status {status}"));
    }
    if error["code"] != "INVALID_REQUEST" {
        wrong.push(format!("code {}", error["code"]));
    }
    if error["field"] != field {
        wrong.push(format!("field {} (expected {field:?})", error["field"]));
    }
    if !message.starts_with(field) {
        wrong.push(format!("message does not start with {field:?}"));
    }
    if let Some(word) = word
        && !message.contains(word)
    {
        wrong.push(format!("message does not say {word:?}"));
    }
    wrong
}
