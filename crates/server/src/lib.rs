//! The local HTTP API (axum + tokio): job queue, progress, results; no GPU code. Arrives with
//! the HTTP API issue; empty until then.
