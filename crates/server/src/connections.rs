//! The accept loop: hyper's HTTP/1 connections with its header-read timer and a bounded read
//! buffer, a write timeout on each socket (`tokio-io-timeout`), at most `max_connections` at
//! once, and a graceful drain at shutdown (`hyper_util`'s `GracefulShutdown`) with a deadline. axum's own `serve` sets no timer, so a client that sends half a
//! request line, or keeps an idle connection open, would hold its socket forever.
//!
//! The other time limits are tower-http layers on the router ([`crate::router`]): the body's
//! idle timeout (`RequestBodyTimeoutLayer`) and the whole request's (`TimeoutLayer`, except the
//! event streams, which last as long as their job).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

/// The limits on connections and their timing.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; more wait in the listen backlog (default 256).
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection is
    /// closed after it (hyper's `header_read_timeout`, default 10 s).
    pub header_timeout: Duration,
    /// A body that sends nothing for this long fails (default 10 s).
    pub body_idle_timeout: Duration,
    /// Every request but the event streams is answered within this: a body still arriving is
    /// cut off with `408` (default 60 s).
    pub request_timeout: Duration,
    /// A write to a client that has not read for this long fails and closes the connection, so
    /// a client that stops reading its answer lets go of its slot and its copy (default 30 s).
    pub write_timeout: Duration,
    /// At shutdown, once the worker has ended, how long open connections may still finish
    /// (default 10 s).
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// How long a failed `accept` (out of file descriptors, most often) waits before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A connection's read buffer at most (hyper's default is about 400 KiB): the headers must fit;
/// bodies stream through it.
pub const MAX_BUFFER_BYTES: usize = 64 << 10;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the open connections to finish their requests (idle ones close at once), until `drained`
/// resolves at the latest.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
    drained: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUFFER_BYTES);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let service = TowerToHyperService::new(app.clone());
        let io = TokioIo::new(Box::pin(stream));
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {},
        () = drained => {},
    }
}
