//! A bounded soak test (issue 18): 20 clients on the loopback send 300 requests in all, mixed:
//! generations followed to the end (polling or the event stream), generations cancelled while
//! waiting or running, bad inputs, slow clients that send a body a few bytes at a time, clients
//! that give up halfway, and 4096x4096 input images. It checks that every accepted job ends,
//! that nothing answers 5xx but a full queue's documented `503 SERVER_BUSY` (with
//! `Retry-After`), and that resident memory stays under the server's stated bound.
//!
//! `SD_SOAK_SECONDS=300` keeps the clients going for at least that long (the closing notes'
//! five-minute run); CI runs the 300 requests once.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use support::{TestServer, base64_text, client, config, read_sse};

const GENERATIONS: &str = "/v1/images/generations";
const CLIENTS: usize = 20;
const REQUESTS: usize = 300;

/// What the clients saw, for the report and the checks.
#[derive(Debug, Default)]
struct Tally {
    completed: usize,
    cancelled: usize,
    refused_400: usize,
    busy_503: usize,
    slow: usize,
    abandoned: usize,
    large: usize,
    /// Anything that breaks the rules: a 5xx other than a full queue, a job that did not end.
    problems: Vec<String>,
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A small deterministic generator for the clients' choices.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

struct Soak<'a> {
    base: &'a str,
    client: Client,
    large: &'a str,
    tally: &'a Mutex<Tally>,
}

impl Soak<'_> {
    fn note(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self
            .tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    fn problem(&self, what: String) {
        self.note(|t| t.problems.push(what));
    }

    /// POSTs a job; its id if accepted. A 503 must be the full queue's, with Retry-After.
    fn post(&self, body: &Value) -> Option<String> {
        let response = match self
            .client
            .post(format!("{}{GENERATIONS}", self.base))
            .json(body)
            .send()
        {
            Ok(r) => r,
            Err(e) => {
                self.problem(format!("POST failed: {e}"));
                return None;
            }
        };
        let status = response.status();
        let retry_after = response.headers().contains_key("retry-after");
        let reply: Value = response.json().unwrap_or(Value::Null);
        match status {
            StatusCode::CREATED => reply["id"].as_str().map(str::to_owned),
            StatusCode::SERVICE_UNAVAILABLE
                if reply["error"]["code"] == "SERVER_BUSY" && retry_after =>
            {
                self.note(|t| t.busy_503 += 1);
                thread::sleep(Duration::from_millis(200));
                None
            }
            StatusCode::BAD_REQUEST => {
                self.problem(format!("a valid job was refused: {body}: {reply}"));
                None
            }
            other => {
                self.problem(format!("POST answered {other}: {reply}"));
                None
            }
        }
    }

    fn state(&self, id: &str) -> Value {
        match self
            .client
            .get(format!("{}{GENERATIONS}/{id}", self.base))
            .send()
        {
            Ok(r) if r.status().is_server_error() => {
                self.problem(format!("GET {id} answered {}", r.status()));
                Value::Null
            }
            Ok(r) => r.json().unwrap_or(Value::Null),
            Err(e) => {
                self.problem(format!("GET {id}: {e}"));
                Value::Null
            }
        }
    }

    /// Polls until the job is final; its status.
    fn follow(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let state = self.state(id);
            if let Some(status @ ("complete" | "error" | "cancelled")) = state["status"].as_str() {
                return status.to_owned();
            }
            if Instant::now() > deadline {
                self.problem(format!("job {id} did not end: {state}"));
                return String::new();
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn generation(&self, dice: &mut Dice) -> Value {
        let sampler = ["euler_a", "euler", "ddim", "dpm++2m"][dice.roll(4) as usize];
        json!({
            "prompt": format!("a digit {}", dice.roll(10)),
            "steps": 1 + dice.roll(3),
            "seed": dice.roll(1000),
            "sampler": sampler,
        })
    }

    fn one(&self, dice: &mut Dice) {
        match dice.roll(8) {
            // A generation followed by polling.
            0 | 1 => {
                if let Some(id) = self.post(&self.generation(dice)) {
                    match self.follow(&id).as_str() {
                        "complete" => self.note(|t| t.completed += 1),
                        other => self.problem(format!("job {id} ended {other}")),
                    }
                }
            }
            // A generation followed on its event stream.
            2 => {
                if let Some(id) = self.post(&self.generation(dice)) {
                    let events = read_sse(
                        &self.client,
                        &format!("{}{GENERATIONS}/{id}/events", self.base),
                    );
                    match events.last().map(|e| e.name.as_str()) {
                        Some("complete") => self.note(|t| t.completed += 1),
                        other => self.problem(format!("job {id}'s stream ended with {other:?}")),
                    }
                }
            }
            // A generation cancelled while it waits or runs.
            3 => {
                if let Some(id) = self.post(&self.generation(dice)) {
                    thread::sleep(Duration::from_millis(dice.roll(300)));
                    let _ = self
                        .client
                        .delete(format!("{}{GENERATIONS}/{id}", self.base))
                        .send();
                    match self.follow(&id).as_str() {
                        "cancelled" => self.note(|t| t.cancelled += 1),
                        "complete" => self.note(|t| t.completed += 1),
                        other => self.problem(format!("cancelled job {id} ended {other}")),
                    }
                }
            }
            // Bad input: 400, never a 5xx.
            4 => {
                let bodies = [
                    "{\"prompt\": ".to_owned(),
                    json!({"prompt": "x", "steps": 0}).to_string(),
                    json!({"prompt": "x", "width": 65}).to_string(),
                    json!({"prompt": "x", "initImage": "not base64!"}).to_string(),
                    json!({"prompt": "x", "mask": "AAAA"}).to_string(),
                    json!({"prompt": 7}).to_string(),
                ];
                let body = &bodies[dice.roll(bodies.len() as u64) as usize];
                match self
                    .client
                    .post(format!("{}{GENERATIONS}", self.base))
                    .body(body.clone())
                    .send()
                {
                    Ok(r) if r.status() == StatusCode::BAD_REQUEST => {
                        self.note(|t| t.refused_400 += 1);
                    }
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                        self.note(|t| t.busy_503 += 1);
                    }
                    Ok(r) => self.problem(format!("bad input {body} answered {}", r.status())),
                    Err(e) => self.problem(format!("bad input {body}: {e}")),
                }
            }
            // A slow client: the body a few bytes at a time, well within the timeouts.
            5 => {
                let body = self.generation(dice).to_string();
                let addr = self.base.trim_start_matches("http://");
                let Ok(mut stream) = TcpStream::connect(addr) else {
                    self.problem("connect failed".into());
                    return;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                let head = format!(
                    "POST {GENERATIONS} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                for chunk in body.as_bytes().chunks(16) {
                    let _ = stream.write_all(chunk);
                    thread::sleep(Duration::from_millis(40));
                }
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 201") {
                    let id = reply
                        .split("\"id\":\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                        .unwrap_or_default()
                        .to_owned();
                    self.follow(&id);
                    self.note(|t| t.slow += 1);
                } else if reply.starts_with("HTTP/1.1 503") {
                    self.note(|t| t.busy_503 += 1);
                } else {
                    self.problem(format!("a slow client got {:?}", reply.lines().next()));
                }
            }
            // A client that sends half a body and goes away.
            6 => {
                let addr = self.base.trim_start_matches("http://");
                if let Ok(mut stream) = TcpStream::connect(addr) {
                    let _ = stream.write_all(
                        format!(
                            "POST {GENERATIONS} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5000\r\n\r\n{{\"prompt\":"
                        )
                        .as_bytes(),
                    );
                }
                self.note(|t| t.abandoned += 1);
            }
            // A 4096x4096 input image, generated at 64x64 or cancelled.
            _ => {
                let body = json!({
                    "prompt": "a 3", "initImage": self.large, "width": 64, "height": 64,
                    "steps": 2, "strength": 0.5,
                });
                if let Some(id) = self.post(&body) {
                    if dice.roll(2) == 0 {
                        let _ = self
                            .client
                            .delete(format!("{}{GENERATIONS}/{id}", self.base))
                            .send();
                    }
                    match self.follow(&id).as_str() {
                        "complete" | "cancelled" => self.note(|t| t.large += 1),
                        other => self.problem(format!("large job {id} ended {other}")),
                    }
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn soak_300_mixed_requests_from_20_clients() {
    let min_time = Duration::from_secs(
        std::env::var("SD_SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    );
    // A queue of 16: some requests still meet a full queue (and must get its documented 503).
    let config = sd_server::ServerConfig {
        queue_size: 16,
        ..config()
    };
    let bound = config.worst_case_request_memory();
    let server = TestServer::start(config);
    let large = {
        let side = sd_server::inputs::MAX_IMAGE_SIDE;
        let image = image::RgbImage::from_pixel(side, side, image::Rgb([200, 30, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        base64_text(out.into_inner())
    };
    let before = resident_bytes();
    let tally = Mutex::new(Tally::default());
    let peak = Mutex::new(before);
    let start = Instant::now();
    thread::scope(|scope| {
        for index in 0..CLIENTS {
            let (base, tally, large, peak) = (&server.base, &tally, &large, &peak);
            scope.spawn(move || {
                let soak = Soak {
                    base,
                    client: client(Duration::from_secs(120)),
                    large,
                    tally,
                };
                let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ ((index as u64 + 1) * 0x2545_f491));
                let mut sent = 0;
                while sent < REQUESTS / CLIENTS || start.elapsed() < min_time {
                    soak.one(&mut dice);
                    sent += 1;
                    let now = resident_bytes();
                    let mut peak = peak
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    *peak = (*peak).max(now);
                }
            });
        }
    });
    let tally = tally
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let peak = peak
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    eprintln!(
        "soak: {:.0} s, {tally:?}; resident {} MiB before, peak {} MiB (bound: +{} MiB)",
        start.elapsed().as_secs_f64(),
        before >> 20,
        peak >> 20,
        bound >> 20
    );
    assert!(tally.problems.is_empty(), "{:#?}", tally.problems);
    assert!(
        peak.saturating_sub(before) <= bound,
        "resident memory grew by {} MiB, over the stated bound of {} MiB",
        peak.saturating_sub(before) >> 20,
        bound >> 20
    );
    assert!(tally.completed > 0 && tally.refused_400 > 0, "{tally:?}");
    // Everything accepted has ended: the server is idle.
    server.wait_idle(Duration::from_secs(60));
}
