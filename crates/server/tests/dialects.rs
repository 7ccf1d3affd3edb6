//! The HTTP server's other dialects over real HTTP (issue 9), each with the exact request and
//! response shapes of its reference document (`shared/reference/`), on the one job queue:
//!
//! - the SD worker's job API: `POST /v1/jobs` `{"operation": {"type": "SDGenerate" |
//!   "ImageTransform", ...}}` -> `{"job_id", "stream_url"}`; `GET stream_url` is SSE with
//!   `data: Step i/n` per step, then `event: complete` with the images (or `error`,
//!   `cancelled`); `DELETE /v1/jobs/{id}` cancels; errors `{"error": {"code", "field",
//!   "message"}}`.
//! - the diffusers task handler's API: `POST /task` `{"task_type": "text-to-image", "params":
//!   {...}}` -> `{"task_id", "status": "pending"}`; `GET /task/{id}` with `progress` and
//!   `result`; `DELETE` cancels; FastAPI's errors (`422 {"detail": [{"loc", "msg", "type"}]}`,
//!   `404 {"detail": "Task not found"}`, `503 {"detail"}`).

mod support;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Response;
use sd_server::ServerConfig;
use serde_json::{Value, json};

use support::judge::{self, Judged};
use support::{
    MODEL_NAME, POLL, SseEvent, TestServer, base64_bytes, base64_text, brief, config, image_bytes,
    input_png, invalid_request_problems, json_of, png_rgb, poll_until, read_sse,
};

const JOBS: &str = "/v1/jobs";
const TASK: &str = "/task";
/// The judged prompt: the digits model's grammar.
const JUDGED_PROMPT: &str = "a red digit seven on a blue background";
/// img2img towards another picture: a yellow 0 on green from the fixture's red 7 on blue.
const TRANSFORM_PROMPT: &str = "a yellow digit zero on a green background";
/// A prompt for jobs whose meaning is not judged.
const PROMPT: &str = "a green digit three on a white background";
const RED_SEVEN_ON_BLUE: Judged = Judged {
    digit: 7,
    fg: "red",
    bg: "blue",
};
/// A judged job's bound (20 steps take ~1 s on the CPU backend, ~30 s on lavapipe).
const JUDGED_JOB: Duration = Duration::from_secs(300);
const TASK_STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

// ---------------------------------------------------------------------------------------------
// The SD worker's job API
// ---------------------------------------------------------------------------------------------

impl TestServer {
    /// `POST /v1/jobs` with `{"operation": operation}`.
    fn post_job(&self, operation: &Value) -> Response {
        self.post_to(JOBS, json!({ "operation": operation }).to_string())
    }

    /// A job that must be accepted: `200 {"job_id", "stream_url"}`, nothing else; its id.
    fn submit_job(&self, operation: &Value) -> String {
        let (status, reply) = json_of(self.post_job(operation));
        assert_eq!(status, StatusCode::OK, "POST {JOBS} {operation}: {reply}");
        let id = reply["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {JOBS}: no `job_id` string: {reply}"))
            .to_owned();
        assert_eq!(
            reply,
            json!({ "job_id": id, "stream_url": format!("/v1/jobs/{id}/stream") }),
            "POST {JOBS}: the reply's shape"
        );
        id
    }

    /// `GET /v1/jobs/{id}`, which must exist.
    fn job(&self, id: &str) -> Value {
        let (status, job) = json_of(self.get(&format!("{JOBS}/{id}")));
        assert_eq!(status, StatusCode::OK, "GET job {id}: {job}");
        assert_eq!(job["job_id"], id, "GET job {id}: {}", brief(&job));
        job
    }

    /// Follows a job's stream (at the `stream_url` the POST gave) to its end.
    fn job_stream(&self, id: &str) -> Vec<SseEvent> {
        read_sse(&self.client, &self.url(&format!("{JOBS}/{id}/stream")))
    }
}

/// A stream as the SD worker's clients read it: `data: Step i/n` lines for steps 1, 2, ...
/// in order, all with the same `n`, then one named final event with JSON data. Returns the
/// steps seen, `n`, the final event's name and its data.
fn read_job_stream(events: &[SseEvent], id: &str) -> (Vec<u32>, Option<u32>, String, Value) {
    let (last, steps) = events
        .split_last()
        .unwrap_or_else(|| panic!("job {id}: an empty stream"));
    let mut seen = Vec::new();
    let mut total = None;
    for event in steps {
        assert_eq!(
            event.name, "message",
            "job {id}: only the final event is named; got {event:?}"
        );
        let (step, n) = event
            .data
            .strip_prefix("Step ")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
            .unwrap_or_else(|| panic!("job {id}: not a `Step i/n` line: {:?}", event.data));
        assert_eq!(
            *total.get_or_insert(n),
            n,
            "job {id}: the step total changed"
        );
        seen.push(step);
    }
    let expected: Vec<u32> = (1..=seen.len() as u32).collect();
    assert_eq!(
        seen, expected,
        "job {id}: every step once, in order, from 1"
    );
    let data = serde_json::from_str(&last.data)
        .unwrap_or_else(|e| panic!("job {id}: the final event's data is not JSON ({e})"));
    (seen, total, last.name.clone(), data)
}

/// The `complete` event's data: `{"job_id", "images": [{"image", "seed", "width", "height"}]}`;
/// the one image as RGB, checked to be a 64x64 PNG with the given seed.
fn complete_image(data: &Value, id: &str, seed: u64) -> Vec<u8> {
    let keys: BTreeSet<&str> = data
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        BTreeSet::from(["job_id", "images"]),
        "complete: {}",
        brief(data)
    );
    assert_eq!(data["job_id"], id, "complete: {}", brief(data));
    let images = data["images"].as_array().expect("images: an array");
    assert_eq!(images.len(), 1, "one image: {}", brief(data));
    let image = &images[0];
    assert_eq!(
        (
            image["seed"].as_u64(),
            image["width"].as_u64(),
            image["height"].as_u64()
        ),
        (Some(seed), Some(64), Some(64)),
        "the image's seed and size: {}",
        brief(data)
    );
    let (rgb, width, height) = png_rgb(&image_bytes(image));
    assert_eq!((width, height), (64, 64), "the PNG's size");
    rgb
}

/// SDGenerate through the document's exact shapes: the stream announces each of the 20 steps
/// as `data: Step i/20`, then `event: complete` with the image, judged right; `GET` reads the
/// same images; a late subscriber gets the steps and the result again.
#[test]
fn job_api_sdgenerate_streams_each_step_then_the_judged_image() {
    let server = TestServer::start(config());
    let start = Instant::now();
    let id = server.submit_job(&json!({
        "type": "SDGenerate",
        "prompt": JUDGED_PROMPT,
        "steps": 20,
        "guidance_scale": 5,
        "seed": 1,
    }));
    let events = server.job_stream(&id);
    let (steps, total, last, data) = read_job_stream(&events, &id);
    eprintln!(
        "job API SDGenerate: {} step lines (of {total:?}), then {last:?} in {:.1?}",
        steps.len(),
        start.elapsed()
    );
    assert_eq!(last, "complete", "the final event: {}", brief(&data));
    assert_eq!(total, Some(20), "`Step i/20` lines");
    assert_eq!(steps.len(), 20, "one line per step");
    let judged = judge::judge_rgb(&complete_image(&data, &id, 1), 64, 64);
    eprintln!("job API SDGenerate: judged {judged}");
    assert_eq!(
        judged, RED_SEVEN_ON_BLUE,
        "the judge's reading of {JUDGED_PROMPT:?}, seed 1"
    );

    let job = server.job(&id);
    assert_eq!(job["status"], "complete", "GET: {}", brief(&job));
    assert_eq!(
        job["images"], data["images"],
        "GET's images and the stream's"
    );

    let late = server.job_stream(&id);
    let (steps, _, last, again) = read_job_stream(&late, &id);
    assert_eq!(
        (steps.len(), last.as_str()),
        (20, "complete"),
        "a late subscriber"
    );
    assert_eq!(again, data, "a late subscriber's result");
}

/// ImageTransform: the fixture's red 7 on blue as base64 with strength 0.9 becomes what the
/// prompt says; `int(20 * 0.9)` = 18 steps run, each announced.
#[test]
fn job_api_image_transform_is_judged() {
    let server = TestServer::start(config());
    let id = server.submit_job(&json!({
        "type": "ImageTransform",
        "prompt": TRANSFORM_PROMPT,
        "image": base64_text(input_png()),
        "strength": 0.9,
        "sampler": "euler",
        "steps": 20,
        "guidance_scale": 5,
        "seed": 1,
    }));
    let (steps, total, last, data) = read_job_stream(&server.job_stream(&id), &id);
    assert_eq!(last, "complete", "the final event: {}", brief(&data));
    assert_eq!(
        (steps.len(), total),
        (18, Some(18)),
        "img2img at strength 0.9 runs 18 of 20 steps"
    );
    let judged = judge::judge_rgb(&complete_image(&data, &id, 1), 64, 64);
    eprintln!("job API ImageTransform: judged {judged}");
    assert_eq!(
        judged,
        Judged {
            digit: 0,
            fg: "yellow",
            bg: "green"
        },
        "ImageTransform of the red 7 on blue, strength 0.9, {TRANSFORM_PROMPT:?}"
    );
}

/// Each bad job is `400 {"error": {"code": "INVALID_REQUEST", "field", "message"}}` with the
/// field as this dialect spells it; unknown ids are `404 NOT_FOUND`; the server keeps serving.
#[test]
fn job_api_bad_input_is_400_naming_the_field() {
    let server = TestServer::start(config());
    let generate = |extra: Value| {
        let mut op = json!({ "type": "SDGenerate", "prompt": PROMPT, "steps": 2 });
        op.as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        json!({ "operation": op }).to_string()
    };
    let transform = |extra: Value| {
        let mut op = json!({ "type": "ImageTransform", "prompt": PROMPT, "steps": 2 });
        op.as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        json!({ "operation": op }).to_string()
    };
    let image = base64_text(input_png());
    // (case, body, field, a word the message must hold)
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        (
            "malformed JSON",
            r#"{"operation": {"#.into(),
            "request",
            None,
        ),
        ("not an object", "[1]".into(), "request", None),
        ("no operation", "{}".into(), "operation", None),
        (
            "operation not an object",
            json!({ "operation": "SDGenerate" }).to_string(),
            "operation",
            None,
        ),
        (
            "unknown top-level key",
            json!({ "operation": { "type": "SDGenerate", "prompt": PROMPT }, "priority": 1 })
                .to_string(),
            "priority",
            Some("operation"),
        ),
        (
            "no type",
            json!({ "operation": { "prompt": PROMPT } }).to_string(),
            "operation.type",
            Some("ImageTransform"),
        ),
        (
            "unknown type",
            generate(json!({ "type": "Upscale" })),
            "operation.type",
            Some("SDGenerate"),
        ),
        (
            "no prompt",
            json!({ "operation": { "type": "SDGenerate" } }).to_string(),
            "operation.prompt",
            None,
        ),
        (
            "steps 0",
            generate(json!({ "steps": 0 })),
            "operation.steps",
            None,
        ),
        (
            "steps \"ten\"",
            generate(json!({ "steps": "ten" })),
            "operation.steps",
            None,
        ),
        (
            "guidance_scale -1",
            generate(json!({ "guidance_scale": -1 })),
            "operation.guidance_scale",
            None,
        ),
        (
            "negative_prompt a number",
            generate(json!({ "negative_prompt": 5 })),
            "operation.negative_prompt",
            None,
        ),
        (
            "width 30",
            generate(json!({ "width": 30 })),
            "operation.width",
            None,
        ),
        (
            "seed -1",
            generate(json!({ "seed": -1 })),
            "operation.seed",
            None,
        ),
        (
            "unknown sampler",
            generate(json!({ "sampler": "unknown" })),
            "operation.sampler",
            Some("euler_a"),
        ),
        (
            "camelCase key",
            generate(json!({ "negativePrompt": "blurry" })),
            "operation.negativePrompt",
            Some("negative_prompt"),
        ),
        (
            "strength on SDGenerate",
            generate(json!({ "strength": 0.5 })),
            "operation.strength",
            Some("ImageTransform"),
        ),
        (
            "image on SDGenerate",
            generate(json!({ "image": image })),
            "operation.image",
            Some("ImageTransform"),
        ),
        (
            "ImageTransform without image",
            transform(json!({})),
            "operation.image",
            Some("required"),
        ),
        (
            "image not base64",
            transform(json!({ "image": "not base64!" })),
            "operation.image",
            Some("base64"),
        ),
        (
            "image not a picture",
            transform(json!({ "image": base64_text("just text") })),
            "operation.image",
            Some("PNG"),
        ),
        (
            "strength 1.5",
            transform(json!({ "image": image, "strength": 1.5 })),
            "operation.strength",
            None,
        ),
        (
            "mask not base64",
            transform(json!({ "image": image, "mask": "%%%" })),
            "operation.mask",
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (case, body, field, word) in cases {
        let (status, reply) = json_of(server.post_to(JOBS, body));
        let wrong = invalid_request_problems(status, &reply, field, word);
        eprintln!("job API bad input: {case}: {status} {}", brief(&reply));
        if !wrong.is_empty() {
            failures.push(format!("{case}: {} — {}", wrong.join(", "), brief(&reply)));
        }
        assert!(
            !server.health().0,
            "{case}: a rejected request started a job"
        );
    }
    assert!(
        failures.is_empty(),
        "bad jobs answered wrongly:\n{}",
        failures.join("\n")
    );

    for (method, path) in [
        ("GET", format!("{JOBS}/no-such-job")),
        ("GET", format!("{JOBS}/no-such-job/stream")),
        ("DELETE", format!("{JOBS}/no-such-job")),
    ] {
        let response = match method {
            "GET" => server.get(&path),
            _ => server.delete_at(&path),
        };
        let (status, reply) = json_of(response);
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {reply}");
        assert_eq!(
            reply["error"]["code"], "NOT_FOUND",
            "{method} {path}: {reply}"
        );
    }

    // Still serving.
    let id = server.submit_job(&json!({ "type": "SDGenerate", "prompt": PROMPT, "steps": 1 }));
    let (_, _, last, data) = read_job_stream(&server.job_stream(&id), &id);
    assert_eq!(last, "complete", "{}", brief(&data));
}

/// Progress is visible (`GET` shows the step, the stream its `Step` lines); `DELETE` of a
/// waiting job cancels it at once, of a running one within a step: the stream ends with
/// `event: cancelled`.
#[test]
fn job_api_cancel_ends_the_stream_with_cancelled() {
    let server = TestServer::start_on_gpu(config());
    let running = server.submit_job(&json!({
        "type": "SDGenerate", "prompt": PROMPT, "steps": 20, "seed": 4,
    }));
    let waiting = server.submit_job(&json!({
        "type": "SDGenerate", "prompt": PROMPT, "steps": 2, "seed": 5,
    }));
    let stream = {
        let (client, url) = (
            server.client.clone(),
            server.url(&format!("{JOBS}/{running}/stream")),
        );
        thread::spawn(move || read_sse(&client, &url))
    };

    let deadline = Instant::now() + Duration::from_secs(120);
    let progressed = loop {
        let job = server.job(&running);
        if job["progress"]["stage"] == "diffusion" && job["progress"]["step"].as_u64() >= Some(2) {
            break job;
        }
        assert!(
            ["pending", "in_progress"].contains(&job["status"].as_str().unwrap_or("")),
            "the 20-step job: {}",
            brief(&job)
        );
        assert!(
            Instant::now() < deadline,
            "no progress within 2 minutes: {}",
            brief(&job)
        );
        thread::sleep(POLL);
    };
    assert_eq!(progressed["status"], "in_progress", "{progressed}");
    assert_eq!(progressed["progress"]["total"], 20, "{progressed}");

    // The waiting job: cancelled at once; its stream is just the end.
    assert_eq!(server.job(&waiting)["status"], "pending", "queued behind");
    let (status, job) = json_of(server.delete_at(&format!("{JOBS}/{waiting}")));
    assert_eq!(status, StatusCode::OK, "DELETE waiting: {job}");
    assert_eq!(job["status"], "cancelled", "DELETE waiting: {job}");
    let events = server.job_stream(&waiting);
    let (steps, _, last, data) = read_job_stream(&events, &waiting);
    assert_eq!(
        (steps.len(), last.as_str()),
        (0, "cancelled"),
        "the waiting job's stream"
    );
    assert_eq!(data, json!({ "job_id": waiting }), "the cancelled event");

    // The running job.
    let (status, job) = json_of(server.delete_at(&format!("{JOBS}/{running}")));
    let deleted = Instant::now();
    assert_eq!(status, StatusCode::OK, "DELETE running: {job}");
    assert!(
        ["in_progress", "cancelled"].contains(&job["status"].as_str().unwrap_or("")),
        "DELETE running: {job}"
    );
    let events = stream.join().expect("the stream reader");
    let (steps, total, last, data) = read_job_stream(&events, &running);
    eprintln!(
        "job API cancel: the stream ended {:.2?} after DELETE with {last:?} after {} of {total:?} steps",
        deleted.elapsed(),
        steps.len()
    );
    assert_eq!(last, "cancelled", "the running job's stream: {data}");
    assert_eq!(data, json!({ "job_id": running }), "the cancelled event");
    assert!(
        (2..20).contains(&steps.len()),
        "the stream showed steps up to the cancel: {steps:?}"
    );
    assert_eq!(server.job(&running)["status"], "cancelled");
    server.wait_idle(Duration::from_secs(30));
}

// ---------------------------------------------------------------------------------------------
// The diffusers task API
// ---------------------------------------------------------------------------------------------

impl TestServer {
    fn post_task(&self, body: &Value) -> Response {
        self.post_to(TASK, body.to_string())
    }

    /// A task that must be accepted: `200 {"task_id", "status": "pending"}`; its id.
    fn submit_task(&self, params: &Value) -> String {
        let body = json!({ "task_type": "text-to-image", "params": params });
        let (status, reply) = json_of(self.post_task(&body));
        assert_eq!(status, StatusCode::OK, "POST {TASK} {body}: {reply}");
        let id = reply["task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {TASK}: no `task_id` string: {reply}"))
            .to_owned();
        assert_eq!(
            reply,
            json!({ "task_id": id, "status": "pending" }),
            "POST {TASK}: the reply's shape"
        );
        id
    }

    /// `GET /task/{id}`, its shape checked.
    fn task(&self, id: &str) -> Value {
        let (status, task) = json_of(self.get(&format!("{TASK}/{id}")));
        assert_eq!(status, StatusCode::OK, "GET task {id}: {task}");
        check_task(&task, id);
        task
    }

    /// Polls a task until `done`; every state goes through `done`.
    fn wait_task(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        poll_until(
            &format!("task {id}"),
            timeout,
            what,
            || self.task(id),
            &mut done,
        )
    }
}

fn task_status(task: &Value) -> &str {
    task["status"].as_str().unwrap_or("")
}

/// `{"task_id", "task_type": "text-to-image", "status", "progress": {"step", "total",
/// "percentage"}, "result"?, "error"?}`, by status.
fn check_task(task: &Value, id: &str) {
    assert_eq!(task["task_id"], id, "{}", brief(task));
    assert_eq!(task["task_type"], "text-to-image", "{}", brief(task));
    let status = task_status(task);
    assert!(
        TASK_STATUSES.contains(&status),
        "status {status:?}: {}",
        brief(task)
    );
    let progress = &task["progress"];
    let (step, total, percentage) = (
        progress["step"].as_u64(),
        progress["total"].as_u64(),
        progress["percentage"].as_f64(),
    );
    let (Some(step), Some(total), Some(percentage)) = (step, total, percentage) else {
        panic!("progress {{step, total, percentage}}: {}", brief(task));
    };
    assert!(
        step <= total && (0.0..=100.0).contains(&percentage),
        "{}",
        brief(task)
    );
    assert_eq!(
        task["result"].is_object(),
        status == "completed",
        "a result only when completed: {}",
        brief(task)
    );
    assert_eq!(
        task["error"].is_string(),
        status == "failed",
        "an error only when failed: {}",
        brief(task)
    );
    if status == "completed" {
        let result = &task["result"];
        let images = result["images"].as_array().expect("result.images");
        assert!(
            !images.is_empty() && images.iter().all(Value::is_string),
            "result.images: base64 strings: {}",
            brief(task)
        );
        for field in ["seed", "width", "height"] {
            assert!(result[field].is_u64(), "result.{field}: {}", brief(task));
        }
        assert_eq!((step, percentage), (total, 100.0), "{}", brief(task));
    }
}

/// The document's request, polled: progress is visible and only goes forward, the result is
/// judged right.
#[test]
fn task_api_text_to_image_is_judged_with_progress() {
    let server = TestServer::start(config());
    let id = server.submit_task(&json!({
        "provider": "diffusers",
        "model_id": MODEL_NAME,
        "prompt": JUDGED_PROMPT,
        "negative_prompt": "",
        "steps": 20,
        "guidance_scale": 5,
        "seed": 1,
    }));
    let mut statuses: Vec<String> = Vec::new();
    let mut running_steps = Vec::new();
    let mut last = (0u64, 0.0f64);
    let done = server.wait_task(&id, JUDGED_JOB, "finished", |task| {
        let status = task_status(task).to_owned();
        let progress = &task["progress"];
        let now = (
            progress["step"].as_u64().unwrap_or(0),
            progress["percentage"].as_f64().unwrap_or(0.0),
        );
        assert!(
            now.0 >= last.0 && now.1 >= last.1,
            "progress went back from {last:?}: {}",
            brief(task)
        );
        last = now;
        if status == "running" {
            assert_eq!(progress["total"], 20, "{}", brief(task));
            running_steps.push(now.0);
        }
        if statuses.last() != Some(&status) {
            statuses.push(status);
        }
        ["completed", "failed", "cancelled"].contains(&task_status(task))
    });
    eprintln!(
        "task API: statuses {statuses:?}; running at steps {:?}",
        running_steps
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(task_status(&done), "completed", "{}", brief(&done));
    assert!(
        running_steps.iter().any(|s| (1..20).contains(s)),
        "a 20-step task never showed a step in progress while polled: {running_steps:?}"
    );
    assert_eq!(
        done["progress"],
        json!({ "step": 20, "total": 20, "percentage": 100.0 })
    );
    let result = &done["result"];
    assert_eq!(
        (
            result["seed"].as_u64(),
            result["width"].as_u64(),
            result["height"].as_u64()
        ),
        (Some(1), Some(64), Some(64)),
        "{}",
        brief(&done)
    );
    let images = result["images"].as_array().expect("checked");
    assert_eq!(images.len(), 1, "{}", brief(&done));
    let (rgb, width, height) = png_rgb(&base64_bytes(images[0].as_str().expect("checked")));
    let judged = judge::judge_rgb(&rgb, width, height);
    eprintln!("task API: judged {judged}");
    assert_eq!(
        judged, RED_SEVEN_ON_BLUE,
        "the judge's reading of {JUDGED_PROMPT:?}, seed 1"
    );
}

/// The PNG's `parameters` text (the A1111 line the server writes).
fn png_parameters(bytes: &[u8]) -> String {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a PNG");
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|chunk| chunk.keyword == "parameters")
        .map(|chunk| chunk.text.clone())
        .expect("a `parameters` text chunk")
}

/// Without `steps` a task runs the document's 30 (the running task shows `total: 30`);
/// without `guidance_scale` 7.5 (in the PNG's parameters). A waiting task shows its steps
/// before it starts; `DELETE` of a running task cancels it within a step.
#[test]
fn task_api_defaults_and_cancel() {
    let server = TestServer::start_on_gpu(config());
    let long = server.submit_task(&json!({ "prompt": PROMPT, "seed": 3 }));
    let short = server.submit_task(&json!({ "prompt": PROMPT, "seed": 4, "steps": 2 }));
    let waiting = server.task(&short);
    assert_eq!(task_status(&waiting), "pending", "{}", brief(&waiting));
    assert_eq!(
        waiting["progress"],
        json!({ "step": 0, "total": 2, "percentage": 0.0 }),
        "a waiting task's progress"
    );

    let running = server.wait_task(&long, Duration::from_secs(120), "at step 1", |task| {
        task_status(task) == "running" && task["progress"]["step"].as_u64() >= Some(1)
    });
    eprintln!("task API default steps: {}", brief(&running));
    assert_eq!(
        running["progress"]["total"], 30,
        "a task without `steps` runs the document's default 30"
    );

    let (status, task) = json_of(server.delete_at(&format!("{TASK}/{long}")));
    let deleted = Instant::now();
    assert_eq!(status, StatusCode::OK, "DELETE running: {task}");
    check_task(&task, &long);
    assert!(
        ["running", "cancelled"].contains(&task_status(&task)),
        "DELETE running: {task}"
    );
    let cancelled = server.wait_task(&long, Duration::from_secs(30), "cancelled", |task| {
        task_status(task) != "running"
    });
    eprintln!(
        "task API cancel: {:.2?} after DELETE: {}",
        deleted.elapsed(),
        brief(&cancelled)
    );
    assert_eq!(task_status(&cancelled), "cancelled", "{cancelled}");
    let stopped_at = cancelled["progress"]["step"].as_u64().expect("checked");
    assert!(
        (1..30).contains(&stopped_at),
        "a cancelled task shows where it stopped: {cancelled}"
    );

    // The waiting task runs next, with guidance 7.5 by default.
    let done = server.wait_task(&short, Duration::from_secs(120), "finished", |task| {
        !["pending", "running"].contains(&task_status(task))
    });
    assert_eq!(task_status(&done), "completed", "{}", brief(&done));
    let image = base64_bytes(done["result"]["images"][0].as_str().expect("checked"));
    let parameters = png_parameters(&image);
    eprintln!("task API defaults: parameters {parameters:?}");
    assert!(
        parameters.contains("Steps: 2,") && parameters.contains("CFG scale: 7.5,"),
        "steps as asked and guidance 7.5 by default: {parameters:?}"
    );
}

/// A bad task: (case, body, `loc`, `type`, a word `msg` must hold).
type TaskCase = (
    &'static str,
    String,
    Vec<&'static str>,
    &'static str,
    Option<&'static str>,
);

/// Each bad task is FastAPI's `422 {"detail": [{"loc", "msg", "type"}]}` with `loc` naming the
/// field; unknown ids are `404 {"detail": "Task not found"}`; the server keeps serving.
#[test]
fn task_api_bad_input_is_422_with_fastapi_detail() {
    let server = TestServer::start(config());
    let with =
        |params: Value| json!({ "task_type": "text-to-image", "params": params }).to_string();
    let cases: Vec<TaskCase> =
        vec![
        (
            "malformed JSON",
            r#"{"task_type": "#.into(),
            vec!["body"],
            "json_invalid",
            None,
        ),
        ("not an object", "[]".into(), vec!["body"], "value_error", None),
        (
            "no task_type",
            json!({ "params": { "prompt": PROMPT } }).to_string(),
            vec!["body", "task_type"],
            "missing",
            None,
        ),
        (
            "another task_type",
            json!({ "task_type": "image-to-image", "params": { "prompt": PROMPT } }).to_string(),
            vec!["body", "task_type"],
            "value_error",
            Some("text-to-image"),
        ),
        (
            "no params",
            json!({ "task_type": "text-to-image" }).to_string(),
            vec!["body", "params"],
            "missing",
            None,
        ),
        (
            "unknown top-level key",
            json!({ "task_type": "text-to-image", "params": { "prompt": PROMPT }, "priority": 1 })
                .to_string(),
            vec!["body", "priority"],
            "extra_forbidden",
            None,
        ),
        (
            "another provider",
            with(json!({ "provider": "comfyui", "prompt": PROMPT })),
            vec!["body", "params", "provider"],
            "value_error",
            Some("diffusers"),
        ),
        (
            "a model that is not loaded",
            with(json!({ "model_id": "runwayml/stable-diffusion-v1-5", "prompt": PROMPT })),
            vec!["body", "params", "model_id"],
            "value_error",
            Some(MODEL_NAME),
        ),
        (
            "no prompt",
            with(json!({ "steps": 2 })),
            vec!["body", "params", "prompt"],
            "missing",
            None,
        ),
        (
            "steps 0",
            with(json!({ "prompt": PROMPT, "steps": 0 })),
            vec!["body", "params", "steps"],
            "value_error",
            None,
        ),
        (
            "steps \"ten\"",
            with(json!({ "prompt": PROMPT, "steps": "ten" })),
            vec!["body", "params", "steps"],
            "value_error",
            None,
        ),
        (
            "guidance_scale \"high\"",
            with(json!({ "prompt": PROMPT, "guidance_scale": "high" })),
            vec!["body", "params", "guidance_scale"],
            "value_error",
            None,
        ),
        (
            "seed -1",
            with(json!({ "prompt": PROMPT, "seed": -1 })),
            vec!["body", "params", "seed"],
            "value_error",
            None,
        ),
        (
            "negative_prompt a number",
            with(json!({ "prompt": PROMPT, "negative_prompt": 5 })),
            vec!["body", "params", "negative_prompt"],
            "value_error",
            None,
        ),
        (
            "an unknown parameter",
            with(json!({ "prompt": PROMPT, "width": 64 })),
            vec!["body", "params", "width"],
            "extra_forbidden",
            Some("guidance_scale"),
        ),
    ];
    let mut failures = Vec::new();
    for (case, body, loc, kind, word) in cases {
        let (status, reply) = json_of(server.post_to(TASK, body));
        eprintln!("task API bad input: {case}: {status} {reply}");
        let mut wrong = Vec::new();
        if status != StatusCode::UNPROCESSABLE_ENTITY {
            wrong.push(format!("status {status}"));
        }
        let keys: Vec<&String> = reply
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if keys != ["detail"] {
            wrong.push(format!("keys {keys:?}"));
        }
        let detail = reply["detail"].as_array().cloned().unwrap_or_default();
        if detail.len() != 1 {
            wrong.push(format!("{} details", detail.len()));
        }
        let error = detail.first().cloned().unwrap_or_default();
        if error["loc"] != json!(loc) {
            wrong.push(format!("loc {} (expected {loc:?})", error["loc"]));
        }
        if error["type"] != kind {
            wrong.push(format!("type {} (expected {kind:?})", error["type"]));
        }
        let msg = error["msg"].as_str().unwrap_or("");
        if msg.is_empty() {
            wrong.push("no msg".into());
        }
        if let Some(word) = word
            && !msg.contains(word)
        {
            wrong.push(format!("msg does not say {word:?}"));
        }
        if !wrong.is_empty() {
            failures.push(format!("{case}: {} — {reply}", wrong.join(", ")));
        }
        assert!(!server.health().0, "{case}: a rejected task started a job");
    }
    assert!(
        failures.is_empty(),
        "bad tasks answered wrongly:\n{}",
        failures.join("\n")
    );

    for response in [
        server.get(&format!("{TASK}/no-such-task")),
        server.delete_at(&format!("{TASK}/no-such-task")),
    ] {
        let (status, reply) = json_of(response);
        assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
        assert_eq!(reply, json!({ "detail": "Task not found" }));
    }

    // Still serving.
    let id = server.submit_task(&json!({ "prompt": PROMPT, "steps": 1 }));
    let done = server.wait_task(&id, Duration::from_secs(120), "finished", |task| {
        !["pending", "running"].contains(&task_status(task))
    });
    assert_eq!(task_status(&done), "completed", "{}", brief(&done));
}

// ---------------------------------------------------------------------------------------------
// One queue
// ---------------------------------------------------------------------------------------------

/// The three dialects share one queue: with one job running (a task) and the one waiting place
/// taken (by a job API job), each dialect's POST is refused in its own shape: `503
/// {"detail"}`, `503 {"error": {"code": "SERVER_BUSY"}}` (both with Retry-After).
#[test]
fn one_queue_serves_every_dialect() {
    let server = TestServer::start_on_gpu(ServerConfig {
        queue_size: 1,
        ..config()
    });
    let running = server.submit_task(&json!({ "prompt": PROMPT, "steps": 20 }));
    server.wait_task(&running, Duration::from_secs(120), "running", |task| {
        task_status(task) == "running"
    });
    let waiting = server.submit_job(&json!({ "type": "SDGenerate", "prompt": PROMPT, "steps": 1 }));
    assert_eq!(server.job(&waiting)["status"], "pending");

    let retry_after = |response: &Response| {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok())
    };
    let response =
        server.post_task(&json!({ "task_type": "text-to-image", "params": { "prompt": PROMPT } }));
    assert!(retry_after(&response).is_some(), "/task 503: Retry-After");
    let (status, reply) = json_of(response);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "/task: {reply}");
    assert!(reply["detail"].is_string(), "/task 503: {reply}");

    let response = server.post_job(&json!({ "type": "SDGenerate", "prompt": PROMPT }));
    assert!(
        retry_after(&response).is_some(),
        "/v1/jobs 503: Retry-After"
    );
    let (status, reply) = json_of(response);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "/v1/jobs: {reply}");
    assert_eq!(reply["error"]["code"], "SERVER_BUSY", "/v1/jobs: {reply}");

    let (status, reply) = json_of(server.post_to(
        "/v1/images/generations",
        json!({ "prompt": PROMPT }).to_string(),
    ));
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("SERVER_BUSY")),
        "/v1/images/generations: {reply}"
    );

    // Cancelling frees the places; the genai route sees the task API's task, too.
    let (status, _) = json_of(server.delete_at(&format!("{JOBS}/{waiting}")));
    assert_eq!(status, StatusCode::OK);
    let (status, _) = json_of(server.delete_at(&format!("{TASK}/{running}")));
    assert_eq!(status, StatusCode::OK);
    server.wait_idle(Duration::from_secs(30));
    let (status, state) = json_of(server.get(&format!("/v1/images/generations/{running}")));
    assert_eq!(
        (status, &state["status"]),
        (StatusCode::OK, &json!("cancelled")),
        "{state}"
    );
}
