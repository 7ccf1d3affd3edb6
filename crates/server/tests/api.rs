//! The local HTTP API over real HTTP (issue 6): each test starts its own server on an ephemeral
//! port (`sd_server::start_background`) with the embedded f16 digits model, and drives it with a
//! blocking client the way desktop apps and scripts do: POST a job, poll it or follow its
//! Server-Sent Events, cancel it, read the images back and judge them.
//!
//! The server, the client and what the HTTP tests share are in `support` (also used by
//! `dialects.rs`).

mod support;

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::blocking::Response;
use reqwest::blocking::multipart::{Form, Part};
use sd_server::ServerConfig;
use serde_json::{Value, json};

use support::judge::{self, Judged};
use support::{
    MODEL_NAME, POLL, TestServer, base64_text, brief, config, image_bytes, input_png,
    invalid_request_problems, json_of, png_rgb, poll_until, read_sse,
};

const GENERATIONS: &str = "/v1/images/generations";
/// img2img and inpainting from uploads (multipart).
const EDITS: &str = "/v1/images/edits";
/// The judged prompt: the digits model's grammar.
const JUDGED_PROMPT: &str = "a red digit seven on a blue background";
/// A prompt for jobs whose meaning is not judged.
const PROMPT: &str = "a green digit three on a white background";
const STATUSES: [&str; 5] = ["pending", "in_progress", "complete", "error", "cancelled"];
const TERMINAL: [&str; 3] = ["complete", "error", "cancelled"];
const STAGES: [&str; 3] = ["loading", "diffusion", "decoding"];
/// Generous bound for a short (1-8 step) 64x64 job, on the CPU backend or lavapipe.
const SHORT_JOB: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The genai-electron routes on the test server
// ---------------------------------------------------------------------------------------------

impl TestServer {
    /// POSTs raw bytes as JSON to the generations route.
    fn post_raw(&self, body: impl Into<Vec<u8>>) -> Response {
        self.post_to(GENERATIONS, body)
    }

    fn post(&self, body: &Value) -> Response {
        self.post_raw(body.to_string())
    }

    /// POSTs a multipart form to the edits route.
    fn post_form(&self, form: Form) -> Response {
        self.client
            .post(self.url(EDITS))
            .multipart(form)
            .send()
            .unwrap_or_else(|e| panic!("POST {EDITS}: {e}"))
    }

    fn delete(&self, id: &str) -> (StatusCode, Value) {
        json_of(self.delete_at(&format!("{GENERATIONS}/{id}")))
    }

    /// POSTs a job that must be accepted; its id.
    fn submit(&self, body: &Value) -> String {
        let (status, reply) = json_of(self.post(body));
        assert_eq!(
            status,
            StatusCode::CREATED,
            "POST {body} should be accepted: {reply}"
        );
        check_accepted(&reply)
    }

    /// GET of a job that must exist, its shape checked.
    fn state(&self, id: &str) -> Value {
        let (status, state) = json_of(self.get(&format!("{GENERATIONS}/{id}")));
        assert_eq!(status, StatusCode::OK, "GET job {id}: {state}");
        check_state(&state, id);
        state
    }

    /// Polls a job until `done` says so; every state seen goes through `done`.
    fn wait_state(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        poll_until(
            &format!("job {id}"),
            timeout,
            what,
            || self.state(id),
            &mut done,
        )
    }

    /// Polls until the job is complete (an `error` or `cancelled` fails the test).
    fn wait_complete(&self, id: &str, timeout: Duration) -> Value {
        let state = self.wait_state(id, timeout, "finished", |s| {
            TERMINAL.contains(&status_of(s))
        });
        assert_eq!(
            status_of(&state),
            "complete",
            "job {id} should complete: {}",
            brief(&state)
        );
        state
    }

    /// Follows a job's event stream to its end.
    fn events(&self, id: &str) -> Vec<Event> {
        read_events(
            &self.client,
            &self.url(&format!("{GENERATIONS}/{id}/events")),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Reading replies
// ---------------------------------------------------------------------------------------------

fn status_of(state: &Value) -> &str {
    state["status"]
        .as_str()
        .unwrap_or_else(|| panic!("a job state without a `status` string: {}", brief(state)))
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
        * 1000.0
}

/// A timestamp field: milliseconds since the epoch (as JavaScript's `Date.now()`), near now.
fn timestamp(value: &Value, field: &str) -> f64 {
    let ms = value[field]
        .as_f64()
        .unwrap_or_else(|| panic!("`{field}` should be a number: {}", brief(value)));
    let day = 86_400_000.0;
    assert!(
        (ms - now_ms()).abs() < day,
        "`{field}` = {ms} should be milliseconds since the epoch, near now ({}): {}",
        now_ms(),
        brief(value)
    );
    ms
}

fn number(value: &Value, field: &str, context: &Value) -> f64 {
    value[field]
        .as_f64()
        .unwrap_or_else(|| panic!("`{field}` should be a number: {}", brief(context)))
}

/// The POST's 201 body: `{ id, status: "pending", createdAt }`; the id.
fn check_accepted(reply: &Value) -> String {
    assert_eq!(reply["status"], "pending", "201 body: {reply}");
    timestamp(reply, "createdAt");
    let id = reply["id"]
        .as_str()
        .unwrap_or_else(|| panic!("201 body without an `id` string: {reply}"));
    assert!(!id.is_empty(), "201 body with an empty id: {reply}");
    id.to_owned()
}

/// The shape of a job state, by status.
fn check_state(state: &Value, id: &str) {
    assert_eq!(
        state["id"],
        id,
        "the state of another job: {}",
        brief(state)
    );
    let status = status_of(state);
    assert!(
        STATUSES.contains(&status),
        "unknown status {status:?}: {}",
        brief(state)
    );
    let created = timestamp(state, "createdAt");
    let updated = timestamp(state, "updatedAt");
    assert!(
        updated >= created,
        "updatedAt before createdAt: {}",
        brief(state)
    );
    match status {
        // `progress` may lag the status by a moment; `in_progress_carries_progress` checks
        // that it does not.
        "in_progress" if !state["progress"].is_null() => check_progress(state),
        "complete" => {
            let result = &state["result"];
            let images = result["images"].as_array().unwrap_or_else(|| {
                panic!("a complete job without `result.images`: {}", brief(state))
            });
            assert!(
                !images.is_empty(),
                "a complete job without images: {}",
                brief(state)
            );
            for image in images {
                assert!(
                    image["image"].is_string(),
                    "image without base64 `image`: {}",
                    brief(state)
                );
                for field in ["seed", "width", "height"] {
                    assert!(
                        image[field].is_u64(),
                        "image `{field}` should be an integer: {}",
                        brief(state)
                    );
                }
            }
            assert!(
                result["format"].is_string(),
                "result without `format`: {}",
                brief(state)
            );
            number(result, "timeTaken", state);
            assert!(
                state.get("error").is_none_or(Value::is_null),
                "complete with an error: {}",
                brief(state)
            );
        }
        "error" => {
            let error = &state["error"];
            assert!(
                error["message"].is_string(),
                "error without `message`: {}",
                brief(state)
            );
            assert!(
                error["code"].is_string(),
                "error without `code`: {}",
                brief(state)
            );
        }
        _ => {}
    }
}

/// `progress: { currentStep, totalSteps, stage, percentage, currentImage, totalImages }`.
fn check_progress(state: &Value) {
    let progress = &state["progress"];
    assert!(
        progress.is_object(),
        "`progress` should be an object: {}",
        brief(state)
    );
    let stage = progress["stage"].as_str().unwrap_or("");
    assert!(
        STAGES.contains(&stage),
        "progress stage {stage:?} not one of {STAGES:?}: {}",
        brief(state)
    );
    let step = number(progress, "currentStep", state);
    let steps = number(progress, "totalSteps", state);
    assert!(
        step <= steps,
        "currentStep beyond totalSteps: {}",
        brief(state)
    );
    let percentage = number(progress, "percentage", state);
    assert!(
        (0.0..=100.0).contains(&percentage),
        "percentage out of 0..=100: {}",
        brief(state)
    );
    let image = number(progress, "currentImage", state);
    let images = number(progress, "totalImages", state);
    assert!(
        images >= 1.0 && image <= images,
        "currentImage/totalImages: {}",
        brief(state)
    );
}

/// `{ error: { message, code, field? } }` with the given status and code; the error object.
fn check_error(response: Response, status: StatusCode, code: &str) -> Value {
    let headers = response.headers().clone();
    let (got, body) = json_of(response);
    assert_eq!(got, status, "expected {status} {code}, got {got}: {body}");
    let error = body["error"].clone();
    assert_eq!(error["code"], code, "error code: {body}");
    let message = error["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "error without a message: {body}");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let retry = headers
            .get(reqwest::header::RETRY_AFTER)
            .unwrap_or_else(|| panic!("503 without Retry-After: {body}"));
        let seconds: u64 = retry
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("Retry-After should be whole seconds, got {retry:?}"));
        assert!(seconds >= 1, "Retry-After: {seconds}");
    }
    error
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Event {
    name: String,
    data: Value,
}

/// Reads a job's event stream until the server ends it; every event's data is JSON.
fn read_events(client: &reqwest::blocking::Client, url: &str) -> Vec<Event> {
    read_sse(client, url)
        .into_iter()
        .map(|event| Event {
            data: serde_json::from_str(&event.data).unwrap_or_else(|e| {
                panic!("{url}: event data is not JSON ({e}): {:?}", event.data)
            }),
            name: event.name,
        })
        .collect()
}

/// Where a progress state is: (status, image, stage, step); it must never go back.
fn position(state: &Value) -> (u8, u64, usize, u64) {
    let progress = &state["progress"];
    let status = match status_of(state) {
        "pending" => 0,
        "in_progress" => 1,
        _ => 2,
    };
    let stage = progress["stage"]
        .as_str()
        .and_then(|s| STAGES.iter().position(|t| *t == s))
        .unwrap_or(0);
    (
        status,
        progress["currentImage"].as_u64().unwrap_or(0),
        stage,
        progress["currentStep"].as_u64().unwrap_or(0),
    )
}

/// Events in order: `progress` events that never go back, then exactly one final event named
/// `last`, carrying the final state of job `id`.
fn check_event_order<'a>(events: &'a [Event], id: &str, last: &str) -> &'a Value {
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let (final_event, progress) = events
        .split_last()
        .unwrap_or_else(|| panic!("job {id}: no events at all"));
    assert_eq!(
        final_event.name, last,
        "job {id}: the last event; events: {names:?}"
    );
    for event in progress {
        assert_eq!(
            event.name, "progress",
            "job {id}: events before the last; events: {names:?}"
        );
        check_state(&event.data, id);
        assert!(
            ["pending", "in_progress"].contains(&status_of(&event.data)),
            "job {id}: a progress event with a final status: {}",
            brief(&event.data)
        );
    }
    for pair in progress.windows(2) {
        let (a, b) = (position(&pair[0].data), position(&pair[1].data));
        assert!(
            a <= b,
            "job {id}: progress went back from {} to {}",
            brief(&pair[0].data),
            brief(&pair[1].data)
        );
        assert_ne!(
            pair[0].data, pair[1].data,
            "job {id}: two progress events with the same state (one per change)"
        );
    }
    check_state(&final_event.data, id);
    assert_eq!(
        status_of(&final_event.data),
        last,
        "job {id}: final event's state"
    );
    &final_event.data
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn config_defaults_are_the_documented_ones() {
    let config = ServerConfig::default();
    assert_eq!(config.host, std::net::IpAddr::from([127, 0, 0, 1]), "host");
    assert_eq!(config.port, 8081, "port");
    assert_eq!(config.queue_size, 8, "queue_size");
    assert_eq!(
        config.result_ttl,
        Duration::from_millis(300_000),
        "IMAGE_RESULT_TTL_MS"
    );
    assert_eq!(
        config.cleanup_interval,
        Duration::from_millis(60_000),
        "IMAGE_CLEANUP_INTERVAL_MS"
    );
    assert_eq!(config.max_body_bytes, 64 * 1024, "max_body_bytes");
    assert_eq!(
        config.max_image_body_bytes,
        32 << 20,
        "max_image_body_bytes"
    );
}

/// POST, poll until complete, and the image means what the prompt says.
#[test]
fn whole_flow_post_poll_and_judge() {
    let server = TestServer::start(config());
    let start = Instant::now();
    let id = server.submit(&json!({
        "prompt": JUDGED_PROMPT,
        "seed": 7,
        "steps": 20,
        "cfgScale": 5.0,
    }));
    let mut seen = Vec::new();
    let done = server.wait_state(&id, Duration::from_secs(300), "finished", |state| {
        let status = status_of(state).to_owned();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        TERMINAL.contains(&status_of(state))
    });
    eprintln!(
        "whole flow: {:?} in {:.1?}; statuses {seen:?}",
        status_of(&done),
        start.elapsed()
    );
    assert_eq!(status_of(&done), "complete", "the job: {}", brief(&done));
    assert!(
        seen.iter().any(|s| s == "in_progress"),
        "a 20-step job never showed `in_progress` with progress while polled: {seen:?}"
    );

    let result = &done["result"];
    assert_eq!(result["format"], "png", "default format: {}", brief(&done));
    assert!(
        number(result, "timeTaken", &done) > 0.0,
        "timeTaken should be > 0: {}",
        brief(&done)
    );
    let images = result["images"].as_array().expect("checked by check_state");
    assert_eq!(images.len(), 1, "count defaults to 1: {}", brief(&done));
    let image = &images[0];
    assert_eq!(image["seed"], 7, "the seed asked for: {}", brief(&done));
    // Width and height default to the model's native size, 64x64 for the digits model.
    let (_, models) = json_of(server.get("/v1/models"));
    assert_eq!(
        image["width"], models["loaded"]["nativeWidth"],
        "default width: {models}"
    );
    assert_eq!(
        image["height"], models["loaded"]["nativeHeight"],
        "default height: {models}"
    );
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(64), Some(64))
    );

    let (rgb, width, height) = png_rgb(&image_bytes(image));
    assert_eq!((width, height), (64, 64), "the PNG's size");
    let judged = judge::judge_rgb(&rgb, width, height);
    eprintln!("whole flow: judged {judged}");
    assert_eq!(
        judged,
        Judged {
            digit: 7,
            fg: "red",
            bg: "blue"
        },
        "the judge's reading of {JUDGED_PROMPT:?}, seed 7"
    );

    // DELETE of a finished job answers its final state.
    let (status, state) = server.delete(&id);
    assert_eq!(
        status,
        StatusCode::OK,
        "DELETE of a finished job: {}",
        brief(&state)
    );
    assert_eq!(
        status_of(&state),
        "complete",
        "DELETE of a finished job: {}",
        brief(&state)
    );
}

/// Events in order, ending with the result; a late subscriber gets the final event at once.
#[test]
fn sse_progress_then_complete_then_end() {
    let server = TestServer::start(config());
    let steps = 6;
    let id = server.submit(&json!({ "prompt": PROMPT, "seed": 11, "steps": steps }));
    let start = Instant::now();
    let events = server.events(&id);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    eprintln!(
        "sse: {} events in {:.1?}: {names:?}",
        events.len(),
        start.elapsed()
    );

    let last = check_event_order(&events, &id, "complete");
    let diffusion: Vec<u64> = events
        .iter()
        .filter(|e| e.data["progress"]["stage"] == "diffusion")
        .filter_map(|e| e.data["progress"]["currentStep"].as_u64())
        .collect();
    assert!(
        !diffusion.is_empty(),
        "no diffusion progress event for a {steps}-step job; events: {names:?}"
    );
    for event in &events {
        if event.data["progress"]["stage"] == "diffusion" {
            assert_eq!(
                event.data["progress"]["totalSteps"],
                steps,
                "{}",
                brief(&event.data)
            );
        }
    }
    let images = last["result"]["images"].as_array().expect("checked");
    assert_eq!(
        images.len(),
        1,
        "the result in the complete event: {}",
        brief(last)
    );
    let polled = server.state(&id);
    assert_eq!(
        last["result"]["images"], polled["result"]["images"],
        "the complete event's images and the polled result differ"
    );

    // Following a job that has already finished: its final event, then the end.
    let late = server.events(&id);
    let last = check_event_order(&late, &id, "complete");
    assert_eq!(
        last["result"]["images"], polled["result"]["images"],
        "late subscriber's result"
    );
}

/// DELETE cancels a pending job at once and a running one within a step; the event stream
/// ends with `cancelled`; the worker then serves the next job.
#[test]
fn cancel_pending_and_running_jobs() {
    let server = TestServer::start_on_gpu(config());
    let running = server.submit(&json!({ "prompt": PROMPT, "seed": 1, "steps": 20 }));
    let pending = server.submit(&json!({ "prompt": PROMPT, "seed": 2, "steps": 2 }));
    let events = {
        let (client, url) = (
            server.client.clone(),
            server.url(&format!("{GENERATIONS}/{running}/events")),
        );
        thread::spawn(move || read_events(&client, &url))
    };

    // The running job reaches its first steps; time one step.
    let first = server.wait_state(
        &running,
        Duration::from_secs(120),
        "at diffusion step >= 1",
        |s| {
            s["progress"]["stage"] == "diffusion"
                && s["progress"]["currentStep"].as_u64() >= Some(1)
        },
    );
    let first_step = first["progress"]["currentStep"].as_u64().expect("checked");
    let t0 = Instant::now();
    let second = server.wait_state(&running, Duration::from_secs(60), "one step further", |s| {
        s["progress"]["currentStep"].as_u64() > Some(first_step) || status_of(s) != "in_progress"
    });
    let step_time = t0.elapsed();
    assert_eq!(
        status_of(&second),
        "in_progress",
        "20 steps should take longer: {}",
        brief(&second)
    );

    // The second job waits behind the first; cancelling it is immediate.
    assert_eq!(
        status_of(&server.state(&pending)),
        "pending",
        "the job queued behind a running one"
    );
    let (status, state) = server.delete(&pending);
    assert_eq!(status, StatusCode::OK, "DELETE pending: {}", brief(&state));
    assert_eq!(
        status_of(&state),
        "cancelled",
        "DELETE pending: {}",
        brief(&state)
    );
    assert_eq!(
        status_of(&server.state(&pending)),
        "cancelled",
        "GET after DELETE of a pending job"
    );

    // The running one stops within a step. The DELETE answers the state as it is then:
    // `cancelled`, or still `in_progress` until the worker reaches its next step.
    let (status, state) = server.delete(&running);
    let cancelled_at = Instant::now();
    assert_eq!(status, StatusCode::OK, "DELETE running: {}", brief(&state));
    assert!(
        ["cancelled", "in_progress"].contains(&status_of(&state)),
        "DELETE running: {}",
        brief(&state)
    );
    eprintln!(
        "cancel: DELETE of the running job answered {:?}",
        status_of(&state)
    );
    let step_at_delete = state["progress"]["currentStep"]
        .as_u64()
        .or(second["progress"]["currentStep"].as_u64())
        .expect("a step count");
    let allowed = step_time * 3 + Duration::from_secs(2);
    let state = server.wait_state(&running, allowed, "cancelled", |s| {
        TERMINAL.contains(&status_of(s))
    });
    let stopped = server.wait_idle(allowed);
    eprintln!(
        "cancel: one step {step_time:.2?}; cancelled {:.2?} and the worker idle {stopped:.2?} after DELETE at step {step_at_delete}",
        cancelled_at.elapsed()
    );
    assert_eq!(
        status_of(&state),
        "cancelled",
        "GET after DELETE of a running job: {}",
        brief(&state)
    );
    assert!(
        state.get("result").is_none_or(Value::is_null),
        "a cancelled job with a result: {}",
        brief(&state)
    );
    if let Some(step) = state["progress"]["currentStep"].as_u64() {
        assert!(
            step <= step_at_delete + 1,
            "the job went on for {} steps after DELETE: {}",
            step - step_at_delete,
            brief(&state)
        );
    }

    let events = events
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    check_event_order(&events, &running, "cancelled");
    eprintln!(
        "cancel: the running job's stream ended {:.2?} after DELETE",
        cancelled_at.elapsed()
    );

    // The worker serves the next job; the cancelled ones stay cancelled.
    let next = server.submit(&json!({ "prompt": PROMPT, "seed": 3, "steps": 2 }));
    server.wait_complete(&next, SHORT_JOB);
    for id in [&running, &pending] {
        let state = server.state(id);
        assert_eq!(status_of(&state), "cancelled", "later: {}", brief(&state));
        assert!(
            state.get("result").is_none_or(Value::is_null),
            "later: {}",
            brief(&state)
        );
    }
}

/// Every `in_progress` state carries `progress` (clients read `progress.currentStep` as soon
/// as the status says `in_progress`), polled as fast as a client might.
#[test]
fn in_progress_carries_progress() {
    let server = TestServer::start(config());
    let mut bare = Vec::new();
    let mut polls = 0;
    for seed in 0..5 {
        let id = server.submit(&json!({ "prompt": PROMPT, "seed": seed, "steps": 1 }));
        let submitted = Instant::now();
        let deadline = submitted + SHORT_JOB;
        loop {
            let state = server.state(&id);
            polls += 1;
            let status = status_of(&state);
            if status == "in_progress" && state["progress"].is_null() {
                bare.push(brief(&state));
            }
            if TERMINAL.contains(&status) {
                assert_eq!(status, "complete", "{}", brief(&state));
                break;
            }
            assert!(Instant::now() < deadline, "job {id} not finished in time");
            // The moment that matters is the job's start: no pause there.
            if submitted.elapsed() > Duration::from_millis(300) {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "{} of {polls} polls showed `in_progress` without `progress`, e.g. {}",
        bare.len(),
        bare[0]
    );
}

/// Shutdown (`cancel_on_shutdown`): the running job is cancelled, its open event stream ends
/// with `cancelled`, the server stops within a few seconds, and then refuses connections.
#[test]
fn shutdown_cancels_a_running_job_with_its_stream_open() {
    let mut server = TestServer::start_on_gpu(config());
    let id = server.submit(&json!({ "prompt": PROMPT, "seed": 8, "steps": 20 }));
    let events = {
        let (client, url) = (
            server.client.clone(),
            server.url(&format!("{GENERATIONS}/{id}/events")),
        );
        thread::spawn(move || read_events(&client, &url))
    };
    server.wait_state(
        &id,
        Duration::from_secs(120),
        "at diffusion step >= 1",
        |s| {
            s["progress"]["stage"] == "diffusion"
                && s["progress"]["currentStep"].as_u64() >= Some(1)
        },
    );
    let start = Instant::now();
    server.server.take().expect("the server runs").shutdown();
    let took = start.elapsed();
    let events = events
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let last = events.last().map(|e| e.name.clone()).unwrap_or_default();
    eprintln!("shutdown: took {took:.2?}; the stream's last event: {last:?}");
    assert!(
        took < Duration::from_secs(5) && last == "cancelled",
        "shutdown with a running job and its event stream open took {took:.2?} and the stream \
         ended with {last:?} (expected: quick, `cancelled`)"
    );
    check_event_order(&events, &id, "cancelled");
    assert!(
        server.client.get(server.url("/health")).send().is_err(),
        "the server still answers after shutdown"
    );
}

/// Results expire: with a 1 s TTL swept every 200 ms, a finished id 404s soon after.
#[test]
fn results_expire_after_the_ttl() {
    let server = TestServer::start(ServerConfig {
        result_ttl: Duration::from_secs(1),
        cleanup_interval: Duration::from_millis(200),
        ..config()
    });
    let id = server.submit(&json!({ "prompt": PROMPT, "seed": 5, "steps": 1 }));
    server.wait_complete(&id, SHORT_JOB);
    let done = Instant::now();
    let path = format!("{GENERATIONS}/{id}");
    loop {
        let response = server.get(&path);
        if response.status() == StatusCode::NOT_FOUND {
            let error = check_error(response, StatusCode::NOT_FOUND, "NOT_FOUND");
            eprintln!("ttl: gone {:.2?} after completion: {error}", done.elapsed());
            break;
        }
        let (status, state) = json_of(response);
        assert_eq!(
            status,
            StatusCode::OK,
            "GET before expiry: {}",
            brief(&state)
        );
        assert!(
            done.elapsed() < Duration::from_secs(4),
            "job {id} still there {:.1?} after completing with a 1 s TTL",
            done.elapsed()
        );
        thread::sleep(POLL);
    }
    // Its events are gone too.
    check_error(
        server.get(&format!("{path}/events")),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
}

/// Each bad request is a 400 naming its field, and the server keeps serving.
#[test]
fn bad_input_is_400_naming_the_field() {
    let server = TestServer::start(config());
    let oversized = json!({ "prompt": "a".repeat(100 * 1024) }).to_string();
    // (case, body, field, a word the message must hold: what is allowed)
    let cases: [(&str, String, &str, Option<&str>); 11] = [
        (
            "missing prompt",
            json!({ "steps": 4 }).to_string(),
            "prompt",
            None,
        ),
        (
            "prompt not a string",
            json!({ "prompt": 7 }).to_string(),
            "prompt",
            None,
        ),
        (
            "count 6",
            json!({ "prompt": PROMPT, "count": 6 }).to_string(),
            "count",
            Some("5"),
        ),
        (
            "count 0",
            json!({ "prompt": PROMPT, "count": 0 }).to_string(),
            "count",
            Some("5"),
        ),
        (
            "width 30",
            json!({ "prompt": PROMPT, "width": 30 }).to_string(),
            "width",
            None,
        ),
        (
            "steps 0",
            json!({ "prompt": PROMPT, "steps": 0 }).to_string(),
            "steps",
            None,
        ),
        (
            "unknown sampler",
            json!({ "prompt": PROMPT, "sampler": "unknown" }).to_string(),
            "sampler",
            Some("euler_a"),
        ),
        (
            "malformed JSON",
            r#"{"prompt": "a red digit"#.to_owned(),
            "request",
            None,
        ),
        (
            "steps \"ten\"",
            json!({ "prompt": PROMPT, "steps": "ten" }).to_string(),
            "steps",
            None,
        ),
        ("body over max_body_bytes", oversized, "request", None),
        (
            "format gif",
            json!({ "prompt": PROMPT, "format": "gif" }).to_string(),
            "format",
            Some("webp"),
        ),
    ];
    let mut failures = Vec::new();
    for (case, body, field, allowed) in cases {
        let response = server.post_raw(body);
        let (status, reply) = json_of(response);
        let wrong = invalid_request_problems(status, &reply, field, allowed);
        eprintln!("bad input: {case}: {status} {reply}");
        if !wrong.is_empty() {
            failures.push(format!("{case}: {} — {reply}", wrong.join(", ")));
        }
        let (busy, _) = server.health();
        assert!(!busy, "{case}: a rejected request started a job");
    }
    assert!(
        failures.is_empty(),
        "bad requests answered wrongly:\n{}",
        failures.join("\n")
    );

    // Still serving: a good job after all that.
    let id = server.submit(&json!({ "prompt": PROMPT, "seed": 9, "steps": 1 }));
    server.wait_complete(&id, SHORT_JOB);
}

/// `sd serve --device gpu`: the same API on the WGSL path says so on `/health` and
/// `/v1/models`, and its jobs complete. (The other tests serve the CPU backend, see `support`;
/// what the GPU path draws is judged in `crates/cli/tests/end_to_end.rs`.)
#[test]
fn a_gpu_model_serves_the_same_api_and_says_so() {
    let server = TestServer::start_on_gpu(config());
    let (_, health) = json_of(server.get("/health"));
    assert_eq!(health["device"], "gpu", "/health: {health}");
    let (_, models) = json_of(server.get("/v1/models"));
    assert_eq!(models["loaded"]["device"], "gpu", "/v1/models: {models}");
    let description = models["loaded"]["deviceDescription"].as_str().unwrap_or("");
    assert!(
        !description.is_empty() && !description.starts_with("CPU"),
        "/v1/models: {models}"
    );

    let id = server.submit(&json!({"prompt": PROMPT, "seed": 7, "steps": 2}));
    let done = server.wait_complete(&id, SHORT_JOB);
    let images = done["result"]["images"]
        .as_array()
        .expect("checked by check_state");
    let (_, width, height) = png_rgb(&image_bytes(&images[0]));
    assert_eq!((width, height), (64, 64), "the GPU job's image");
}

/// Unknown ids are 404 NOT_FOUND on every job route; `/health` and `/v1/models` answer.
#[test]
fn health_models_and_unknown_ids() {
    let server = TestServer::start(config());
    let (busy, took) = server.health();
    assert!(!busy, "an idle server is not busy");
    eprintln!("health: {took:.2?} idle");

    let (status, models) = json_of(server.get("/v1/models"));
    assert_eq!(status, StatusCode::OK, "/v1/models: {models}");
    assert_eq!(models["loaded"]["name"], MODEL_NAME, "/v1/models: {models}");
    assert_eq!(models["loaded"]["nativeWidth"], 64, "/v1/models: {models}");
    assert_eq!(models["loaded"]["nativeHeight"], 64, "/v1/models: {models}");
    // The test server's model is on the CPU backend (see `support`).
    assert_eq!(models["loaded"]["device"], "cpu", "/v1/models: {models}");
    assert!(
        models["loaded"]["deviceDescription"]
            .as_str()
            .is_some_and(|d| d.starts_with("CPU")),
        "/v1/models: {models}"
    );
    let (status, health) = json_of(server.get("/health"));
    assert_eq!(status, StatusCode::OK, "/health: {health}");
    assert_eq!(health["device"], "cpu", "/health: {health}");
    let available = models["available"]
        .as_array()
        .expect("`available` is a list");
    assert!(available.iter().any(|n| n == "digits"), "{models}");
    let listed = models["models"].as_array().expect("`models` is a list");
    let find = |name: &str| {
        listed
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("/v1/models lacks {name}: {models}"))
    };
    assert_eq!(find("digits")["downloaded"], true, "{models}");
    assert_eq!(find("digits")["format"], "preset", "{models}");
    let sd15 = find("sd15");
    assert_eq!(sd15["nativeWidth"], 512, "{models}");
    assert!(sd15["downloaded"].is_boolean(), "{models}");
    assert!(
        sd15["location"]
            .as_str()
            .is_some_and(|l| l.contains("stable-diffusion-v1-5/stable-diffusion-v1-5")),
        "{models}"
    );
    eprintln!("models: {models}");

    let unknown = "no-such-job";
    let path = format!("{GENERATIONS}/{unknown}");
    check_error(server.get(&path), StatusCode::NOT_FOUND, "NOT_FOUND");
    check_error(
        server.get(&format!("{path}/events")),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    let (status, reply) = server.delete(unknown);
    assert_eq!(status, StatusCode::NOT_FOUND, "DELETE unknown: {reply}");
    assert_eq!(
        reply["error"]["code"], "NOT_FOUND",
        "DELETE unknown: {reply}"
    );
}

/// queue_size pending jobs beyond the running one; the next POST is 503 SERVER_BUSY with
/// Retry-After, and once the queue drains, POSTs are accepted again.
#[test]
fn full_queue_is_503_with_retry_after() {
    let server = TestServer::start_on_gpu(ServerConfig {
        queue_size: 2,
        ..config()
    });
    let running = server.submit(&json!({ "prompt": PROMPT, "seed": 1, "steps": 20 }));
    server.wait_state(&running, Duration::from_secs(120), "in_progress", |s| {
        status_of(s) == "in_progress"
    });
    let queued: Vec<String> = (0..2)
        .map(|i| server.submit(&json!({ "prompt": PROMPT, "seed": 10 + i, "steps": 1 })))
        .collect();
    let error = check_error(
        server.post(&json!({ "prompt": PROMPT, "steps": 1 })),
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVER_BUSY",
    );
    eprintln!("queue full: {error}");

    // Cancelled waiting jobs wait no more: their places are free while the first job runs.
    for id in &queued {
        let (status, state) = server.delete(id);
        assert_eq!(status, StatusCode::OK, "DELETE {id}: {}", brief(&state));
        assert_eq!(
            status_of(&state),
            "cancelled",
            "DELETE pending {id}: {}",
            brief(&state)
        );
    }
    assert_eq!(
        status_of(&server.state(&running)),
        "in_progress",
        "the 20-step job still runs"
    );
    let (status, after_cancel) =
        json_of(server.post(&json!({ "prompt": PROMPT, "seed": 6, "steps": 1 })));
    let (status_2, reply_2) =
        json_of(server.post(&json!({ "prompt": PROMPT, "seed": 7, "steps": 1 })));
    let mut accepted = Vec::new();
    for (status, reply) in [(status, &after_cancel), (status_2, &reply_2)] {
        if status == StatusCode::CREATED {
            accepted.push(check_accepted(reply));
        }
    }
    let (_, state) = server.delete(&running);
    eprintln!(
        "queue full: DELETE running answered {:?}",
        status_of(&state)
    );
    for id in &accepted {
        server.wait_complete(id, SHORT_JOB);
    }
    assert_eq!(
        (status, status_2),
        (StatusCode::CREATED, StatusCode::CREATED),
        "with 2 waiting jobs cancelled, a queue of 2 should take 2 new ones: {after_cancel} / {reply_2}"
    );
    server.wait_idle(Duration::from_secs(30));
    let id = server.submit(&json!({ "prompt": PROMPT, "seed": 4, "steps": 1 }));
    server.wait_complete(&id, SHORT_JOB);
}

/// 100 POSTs from 10 clients against a queue of 8: each is 201 or 503; every accepted job
/// completes exactly once with its own seed; `/health` stays fast throughout.
#[test]
fn load_100_requests_from_10_clients() {
    const CLIENTS: u64 = 10;
    const EACH: u64 = 10;
    let server = TestServer::start(ServerConfig {
        queue_size: 8,
        ..config()
    });
    let url = server.url(GENERATIONS);
    let posters: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, url) = (server.client.clone(), url.clone());
            thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        let seed = 1000 + c * EACH + i;
                        let body = json!({ "prompt": PROMPT, "seed": seed, "steps": 1 });
                        let response = client
                            .post(&url)
                            .json(&body)
                            .send()
                            .unwrap_or_else(|e| panic!("client {c}, request {i}: {e}"));
                        match response.status() {
                            StatusCode::CREATED => {
                                let (_, reply) = json_of(response);
                                Some((check_accepted(&reply), seed))
                            }
                            StatusCode::SERVICE_UNAVAILABLE => {
                                check_error(response, StatusCode::SERVICE_UNAVAILABLE, "SERVER_BUSY");
                                None
                            }
                            other => {
                                let (_, reply) = json_of(response);
                                panic!("client {c}, request {i}: {other} is neither 201 nor 503: {reply}")
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    // /health while the clients post and the jobs run.
    let mut health: Vec<(bool, Duration)> = Vec::new();
    while !posters.iter().all(|p| p.is_finished()) {
        health.push(server.health());
        thread::sleep(Duration::from_millis(50));
    }
    let outcomes: Vec<Option<(String, u64)>> = posters
        .into_iter()
        .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect();
    assert_eq!(
        outcomes.len() as u64,
        CLIENTS * EACH,
        "every request answered"
    );
    let accepted: HashMap<String, u64> = outcomes.iter().flatten().cloned().collect();
    let accepted_count = outcomes.iter().flatten().count();
    assert_eq!(
        accepted.len(),
        accepted_count,
        "the server gave the same id twice"
    );
    let rejected = outcomes.len() - accepted_count;
    eprintln!("load: {accepted_count} accepted, {rejected} answered 503");
    assert!(
        accepted_count >= 8,
        "an idle server with a queue of 8 accepted only {accepted_count} of 100"
    );

    // Every accepted job completes, once, with its own seed.
    let mut remaining: HashSet<&String> = accepted.keys().collect();
    let mut completed = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60) + SHORT_JOB / 4 * accepted_count as u32;
    while !remaining.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {accepted_count} accepted jobs not complete in time",
            remaining.len()
        );
        health.push(server.health());
        let mut finished = Vec::new();
        for &id in &remaining {
            let state = server.state(id);
            match status_of(&state) {
                "pending" | "in_progress" => {}
                "complete" => {
                    let images = state["result"]["images"].as_array().expect("checked");
                    assert_eq!(images.len(), 1, "job {id}: {}", brief(&state));
                    assert_eq!(
                        images[0]["seed"], accepted[id],
                        "job {id} carries another job's seed"
                    );
                    assert!(completed.insert(id.clone()), "job {id} completed twice");
                    finished.push(id);
                }
                other => panic!("job {id} ended {other}: {}", brief(&state)),
            }
        }
        for id in finished {
            remaining.remove(id);
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(completed.len(), accepted_count, "completed jobs");
    // Completed jobs stay complete.
    for id in accepted.keys() {
        assert_eq!(status_of(&server.state(id)), "complete", "job {id} later");
    }

    let busy: Vec<Duration> = health.iter().filter(|h| h.0).map(|h| h.1).collect();
    let slowest = health.iter().map(|h| h.1).max().unwrap_or_default();
    eprintln!(
        "load: /health answered {} times ({} busy), slowest {slowest:.2?}",
        health.len(),
        busy.len()
    );
    assert!(
        busy.len() >= 3,
        "/health was measured only {} times while busy",
        busy.len()
    );
    assert!(
        slowest < Duration::from_millis(500),
        "/health took {slowest:?} under load (all: {:?})",
        health.iter().map(|h| h.1).collect::<Vec<_>>()
    );
}

/// count 3 with seed 40: seeds 40, 41, 42 and three different images.
#[test]
fn batch_of_three_has_consecutive_seeds() {
    let server = TestServer::start(config());
    let id = server.submit(&json!({ "prompt": PROMPT, "seed": 40, "steps": 4, "count": 3 }));
    let done = server.wait_state(&id, SHORT_JOB * 2, "finished", |state| {
        if !state["progress"].is_null() {
            assert_eq!(
                state["progress"]["totalImages"],
                3,
                "progress of a batch: {}",
                brief(state)
            );
        }
        TERMINAL.contains(&status_of(state))
    });
    assert_eq!(status_of(&done), "complete", "{}", brief(&done));
    let images = done["result"]["images"].as_array().expect("checked");
    let seeds: Vec<u64> = images.iter().filter_map(|i| i["seed"].as_u64()).collect();
    assert_eq!(seeds, [40, 41, 42], "batch seeds: {}", brief(&done));
    let pixels: Vec<Vec<u8>> = images
        .iter()
        .map(|image| {
            let (rgb, width, height) = png_rgb(&image_bytes(image));
            assert_eq!((width, height), (64, 64), "batch image size");
            rgb
        })
        .collect();
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        assert_ne!(
            pixels[a], pixels[b],
            "batch images {a} and {b} are the same picture"
        );
    }
}

/// `/openapi.json`: valid JSON naming every route.
#[test]
fn openapi_document_lists_the_routes() {
    let server = TestServer::start(config());
    let (status, doc) = json_of(server.get("/openapi.json"));
    assert_eq!(status, StatusCode::OK, "/openapi.json");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "an OpenAPI 3 document: openapi = {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("the document has `paths`");
    for path in [
        "/v1/images/generations",
        "/v1/images/generations/{id}",
        "/v1/images/generations/{id}/events",
        "/health",
        "/v1/models",
        EDITS,
        // The other dialects (tests/dialects.rs).
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/stream",
        "/task",
        "/task/{task_id}",
    ] {
        assert!(
            paths.contains_key(path),
            "/openapi.json lacks {path}; it has {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let edit = &doc["paths"][EDITS]["post"]["requestBody"]["content"]["multipart/form-data"];
    assert!(
        edit.is_object(),
        "{EDITS}: a multipart/form-data request body: {}",
        doc["paths"][EDITS]
    );
    let json_body = doc["paths"][GENERATIONS]["post"]["requestBody"].to_string();
    let schemas = doc["components"]["schemas"].to_string();
    for field in ["initImage", "mask", "strength"] {
        assert!(
            schemas.contains(&format!("\"{field}\"")),
            "the generation request schema lacks `{field}`: {json_body}"
        );
    }
}

/// `format` jpeg and webp give those formats.
#[test]
fn jpeg_and_webp_formats() {
    let server = TestServer::start(config());
    let jobs: Vec<(&str, String)> = ["jpeg", "webp"]
        .into_iter()
        .map(|format| {
            let body = json!({ "prompt": PROMPT, "seed": 21, "steps": 2, "format": format });
            (format, server.submit(&body))
        })
        .collect();
    for (format, id) in jobs {
        let done = server.wait_complete(&id, SHORT_JOB);
        assert_eq!(done["result"]["format"], format, "{}", brief(&done));
        let bytes = image_bytes(&done["result"]["images"][0]);
        let ok = match format {
            "jpeg" => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
            _ => bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP",
        };
        assert!(
            ok,
            "format {format}: the image starts {:02x?}",
            &bytes[..bytes.len().min(12)]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// img2img and inpainting (issue 7)
// ---------------------------------------------------------------------------------------------

/// img2img towards another picture: a yellow 0 on green from the red 7 on blue.
const IMG2IMG_PROMPT: &str = "a yellow digit zero on a green background";
const IMG2IMG_SEED: u64 = 1;
/// Inpainting a 3 into the middle of the 7's picture.
const INPAINT_PROMPT: &str = "a red digit three on a blue background";
const INPAINT_SEED: u64 = 1;

/// An image as PNG bytes.
fn encode_png(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a PNG");
    out.into_inner()
}

/// The inpainting mask: a white square over pixels 8..56 both ways, on black, 64x64.
fn mask_png() -> Vec<u8> {
    let inside = |v: u32| (8..56).contains(&v);
    let mask = image::GrayImage::from_fn(64, 64, |x, y| {
        image::Luma([if inside(x) && inside(y) { 255 } else { 0 }])
    });
    encode_png(&image::DynamicImage::ImageLuma8(mask))
}

fn file_part(bytes: Vec<u8>, name: &str, mime: &str) -> Part {
    Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)
        .expect("a MIME type")
}

/// The one image of a complete job: (RGB, width, height), checked to be 64x64.
fn only_image(done: &Value) -> Vec<u8> {
    let images = done["result"]["images"].as_array().expect("checked");
    assert_eq!(images.len(), 1, "one image: {}", brief(done));
    assert_eq!(
        (images[0]["width"].as_u64(), images[0]["height"].as_u64()),
        (Some(64), Some(64)),
        "the size defaults to the input image's: {}",
        brief(done)
    );
    let (rgb, width, height) = png_rgb(&image_bytes(&images[0]));
    assert_eq!((width, height), (64, 64), "the PNG's size");
    rgb
}

/// img2img through the JSON route: `initImage` as base64 (and as a data URL) with strength
/// 0.9 repaints the red 7 on blue as the prompt says; with 0.3 it stays a red 7 on blue.
#[test]
fn img2img_through_json() {
    let server = TestServer::start(config());
    let input = base64_text(input_png());
    let far = server.submit(&json!({
        "prompt": IMG2IMG_PROMPT,
        "initImage": input,
        "strength": 0.9,
        "sampler": "euler",
        "steps": 20,
        "cfgScale": 5,
        "seed": IMG2IMG_SEED,
    }));
    let near = server.submit(&json!({
        "prompt": JUDGED_PROMPT,
        "initImage": format!("data:image/png;base64,{input}"),
        "strength": 0.3,
        "sampler": "euler",
        "steps": 20,
        "cfgScale": 5,
        "seed": IMG2IMG_SEED,
    }));
    let mut totals = HashSet::new();
    let done = server.wait_state(&far, Duration::from_secs(300), "finished", |state| {
        if state["progress"]["stage"] == "diffusion" {
            totals.insert(state["progress"]["totalSteps"].as_u64());
        }
        TERMINAL.contains(&status_of(state))
    });
    assert_eq!(
        status_of(&done),
        "complete",
        "img2img 0.9: {}",
        brief(&done)
    );
    eprintln!("img2img 0.9: diffusion totalSteps seen {totals:?}");
    let judged = judge::judge_rgb(&only_image(&done), 64, 64);
    eprintln!("img2img 0.9: judged {judged}");
    assert_eq!(
        judged,
        Judged {
            digit: 0,
            fg: "yellow",
            bg: "green"
        },
        "img2img of the red 7 on blue, strength 0.9, {IMG2IMG_PROMPT:?}, seed {IMG2IMG_SEED}"
    );

    let done = server.wait_complete(&near, Duration::from_secs(300));
    let judged = judge::judge_rgb(&only_image(&done), 64, 64);
    eprintln!("img2img 0.3: judged {judged}");
    assert_eq!(
        judged,
        Judged {
            digit: 7,
            fg: "red",
            bg: "blue"
        },
        "img2img of the red 7 on blue, strength 0.3, {JUDGED_PROMPT:?}"
    );
}

/// Inpainting through the multipart route: the masked middle becomes a 3 on blue, the border
/// outside the mask stays near the input.
#[test]
fn inpaint_through_multipart_edits() {
    let server = TestServer::start(config());
    let form = Form::new()
        .part("image", file_part(input_png(), "input.png", "image/png"))
        .part("mask", file_part(mask_png(), "mask.png", "image/png"))
        .text("prompt", INPAINT_PROMPT)
        .text("strength", "1")
        .text("sampler", "euler")
        .text("steps", "20")
        .text("cfgScale", "5")
        .text("seed", INPAINT_SEED.to_string());
    let (status, reply) = json_of(server.post_form(form));
    assert_eq!(status, StatusCode::CREATED, "POST {EDITS}: {reply}");
    let id = check_accepted(&reply);
    let done = server.wait_complete(&id, Duration::from_secs(300));
    let images = &done["result"]["images"];
    assert_eq!(images[0]["seed"], INPAINT_SEED, "{}", brief(&done));
    let rgb = only_image(&done);
    let judged = judge::judge_rgb(&rgb, 64, 64);
    eprintln!("inpaint: judged {judged}");
    assert!(
        judged.digit == 3 && judged.bg == "blue",
        "inpainting {INPAINT_PROMPT:?} into the 7's picture, seed {INPAINT_SEED}: judged {judged}, \
         expected a 3 on blue"
    );

    // The border (outside 4..60 both ways, well outside the mask) keeps the input's pixels,
    // up to the VAE's round trip.
    let (input, _, _) = judge::decode_png_rgb(&input_png(), "the input");
    let (mut sum, mut n) = (0u64, 0u64);
    for y in 0..64usize {
        for x in 0..64usize {
            if (4..60).contains(&x) && (4..60).contains(&y) {
                continue;
            }
            for c in 0..3 {
                let i = (y * 64 + x) * 3 + c;
                sum += u64::from(rgb[i].abs_diff(input[i]));
                n += 1;
            }
        }
    }
    let mean = sum as f64 / n as f64;
    eprintln!("inpaint: border mean |difference| from the input {mean:.1} of 255");
    assert!(
        mean < 12.0,
        "the border outside the mask changed by {mean:.1} of 255 on average"
    );
}

/// Bad img2img and inpainting input, through either route, is a 400 naming its field; the
/// server keeps serving.
#[test]
fn bad_image_input_is_400_naming_the_field() {
    let server = TestServer::start(ServerConfig {
        max_image_body_bytes: 256 << 10,
        ..config()
    });
    let input = input_png();
    let input_b64 = base64_text(&input);
    let too_wide = encode_png(&image::DynamicImage::new_luma8(5000, 8));
    let json_cases: Vec<(&str, Value, &str, Option<&str>)> = vec![
        (
            "initImage not base64",
            json!({ "prompt": PROMPT, "initImage": "this is not base64!" }),
            "initImage",
            Some("base64"),
        ),
        (
            "initImage not an image",
            json!({ "prompt": PROMPT, "initImage": base64_text("just some text, not a picture") }),
            "initImage",
            Some("PNG, JPEG or WebP"),
        ),
        (
            "initImage not a string",
            json!({ "prompt": PROMPT, "initImage": 7 }),
            "initImage",
            None,
        ),
        (
            "initImage too large",
            json!({ "prompt": PROMPT, "initImage": base64_text(&too_wide) }),
            "initImage",
            Some("4096x4096"),
        ),
        (
            "mask without initImage",
            json!({ "prompt": PROMPT, "mask": input_b64 }),
            "mask",
            Some("initImage"),
        ),
        (
            "mask not an image",
            json!({ "prompt": PROMPT, "initImage": input_b64, "mask": base64_text("no") }),
            "mask",
            Some("PNG, JPEG or WebP"),
        ),
        (
            "strength 2",
            json!({ "prompt": PROMPT, "initImage": input_b64, "strength": 2 }),
            "strength",
            Some("1"),
        ),
        (
            "body over max_image_body_bytes",
            json!({ "prompt": PROMPT, "initImage": "A".repeat(300 << 10) }),
            "request",
            None,
        ),
    ];
    let form = || Form::new().text("prompt", PROMPT).text("steps", "2");
    let png_part = || file_part(input.clone(), "input.png", "image/png");
    let form_cases: Vec<(&str, Form, &str, Option<&str>)> = vec![
        ("multipart without image", form(), "image", Some("required")),
        (
            "multipart image not an image",
            form().part(
                "image",
                file_part(b"hello, world".to_vec(), "notes.txt", "text/plain"),
            ),
            "image",
            Some("PNG, JPEG or WebP"),
        ),
        (
            "multipart mask not an image",
            form().part("image", png_part()).part(
                "mask",
                file_part(b"GIF89a".to_vec(), "mask.gif", "image/gif"),
            ),
            "mask",
            Some("PNG, JPEG or WebP"),
        ),
        (
            "multipart mask without image",
            form().part("mask", png_part()),
            "mask",
            Some("image"),
        ),
        (
            "multipart steps \"ten\"",
            Form::new()
                .text("prompt", PROMPT)
                .text("steps", "ten")
                .part("image", png_part()),
            "steps",
            None,
        ),
        (
            "multipart without prompt",
            Form::new().part("image", png_part()),
            "prompt",
            None,
        ),
        (
            "multipart unknown part",
            form().part("image", png_part()).text("stepz", "3"),
            "stepz",
            Some("prompt"),
        ),
        (
            "multipart strength 2",
            form().part("image", png_part()).text("strength", "2"),
            "strength",
            None,
        ),
        (
            "multipart body over max_image_body_bytes",
            form().part(
                "image",
                file_part(vec![0; 300 << 10], "big.png", "image/png"),
            ),
            "request",
            Some("larger"),
        ),
    ];
    let mut responses: Vec<(&str, Response, &str, Option<&str>)> = Vec::new();
    for (case, body, field, word) in json_cases {
        responses.push((case, server.post(&body), field, word));
    }
    for (case, form, field, word) in form_cases {
        eprintln!("bad image input: sending {case}");
        responses.push((case, server.post_form(form), field, word));
    }
    let not_multipart = server
        .client
        .post(server.url(EDITS))
        .json(&json!({ "prompt": PROMPT }))
        .send()
        .expect("POST JSON to the edits route");
    responses.push((
        "JSON to the multipart route",
        not_multipart,
        "request",
        Some("multipart/form-data"),
    ));

    let mut failures = Vec::new();
    for (case, response, field, word) in responses {
        let (status, reply) = json_of(response);
        let wrong = invalid_request_problems(status, &reply, field, word);
        eprintln!("bad image input: {case}: {status} {reply}");
        if !wrong.is_empty() {
            failures.push(format!("{case}: {} — {reply}", wrong.join(", ")));
        }
        let (busy, _) = server.health();
        assert!(!busy, "{case}: a rejected request started a job");
    }
    assert!(
        failures.is_empty(),
        "bad requests answered wrongly:\n{}",
        failures.join("\n")
    );

    // Still serving, through both routes.
    let id = server.submit(&json!({
        "prompt": PROMPT, "initImage": input_b64, "strength": 0.5, "seed": 9, "steps": 2,
    }));
    server.wait_complete(&id, SHORT_JOB);
    let (status, reply) = json_of(server.post_form(form().part("image", png_part())));
    assert_eq!(status, StatusCode::CREATED, "POST {EDITS}: {reply}");
    server.wait_complete(&check_accepted(&reply), SHORT_JOB);
}
