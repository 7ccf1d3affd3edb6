//! A small static file server for the browser tests, the web benchmark and `cargo xtask serve`.
//!
//! - Bound to `127.0.0.1` (a secure context, so the page gets WebGPU); port 0 picks a free one.
//! - A route table maps URL prefixes to folders; the longest matching prefix wins. `/` of a
//!   folder serves its `index.html`; a folder without its trailing slash is redirected to it.
//! - Paths that would leave the folder (`..`, `.`, backslashes, NUL, or a symlink pointing out)
//!   and missing files are 404.
//! - Every response carries `Cache-Control: no-store`, so the browser's HTTP cache never answers
//!   a request the log would then miss: the tests count shard downloads from this log.
//! - The request log counts every request by path (without the query string), readable from Rust
//!   (`StaticServer::requests`) and over HTTP at `GET /__requests` as
//!   `{"total": n, "paths": {"/models/digits/<sha>.safetensors": count, ...}}`. Requests for
//!   `/__requests` itself are not counted, so reading the log does not change it.
//! - One thread serves all requests; dropping the server stops it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

/// The path of the request log.
pub const REQUESTS_PATH: &str = "/__requests";

/// One entry of the route table: URL paths starting with `prefix` are served from `dir`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Starts and ends with `/` (added when missing).
    pub prefix: String,
    pub dir: PathBuf,
}

impl Route {
    /// A route from `prefix` (e.g. `/pkg/`) to `dir`.
    pub fn new(prefix: &str, dir: impl Into<PathBuf>) -> Self {
        let mut prefix = prefix.trim_matches('/').to_string();
        prefix = if prefix.is_empty() {
            "/".to_string()
        } else {
            format!("/{prefix}/")
        };
        Self {
            prefix,
            dir: dir.into(),
        }
    }
}

/// The routes of the demo (the contract): `/` is `www/`, `/pkg/` the npm package
/// `wasm-bindgen` and `cargo xtask build-wasm` made, `/models/digits/` the embedded model in the
/// web format.
pub fn demo_routes(root: &Path) -> Vec<Route> {
    vec![
        Route::new("/", root.join("www")),
        Route::new("/pkg/", crate::web::npm_package_dir(root)),
        Route::new("/models/digits/", crate::web::web_model_dir(root)),
    ]
}

/// What the server has served since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests of any path.
    pub total: u64,
    /// Requests per path (no query string).
    pub paths: BTreeMap<String, u64>,
}

impl RequestCounts {
    /// How often `path` was requested.
    pub fn count(&self, path: &str) -> u64 {
        self.paths.get(path).copied().unwrap_or(0)
    }

    /// The log as the JSON that `GET /__requests` returns.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "total": self.total, "paths": self.paths }).to_string()
    }
}

type Log = Arc<Mutex<RequestCounts>>;

fn lock(log: &Log) -> std::sync::MutexGuard<'_, RequestCounts> {
    // A panic while holding the lock cannot leave the counts half-written.
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running server; stops when dropped.
pub struct StaticServer {
    addr: SocketAddr,
    log: Log,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl StaticServer {
    /// Starts serving `routes` on `127.0.0.1:port` (0: any free port).
    pub fn start(port: u16, routes: Vec<Route>) -> io::Result<Self> {
        let server = Server::http(("127.0.0.1", port))
            .map_err(|e| io::Error::other(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the server is not on a TCP address"))?;
        let server = Arc::new(server);
        let log = Log::default();
        let mut routes = routes;
        // Longest prefix first, so `/models/digits/` wins over `/`.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let thread = std::thread::Builder::new()
            .name(format!("static-server-{}", addr.port()))
            .spawn({
                let server = Arc::clone(&server);
                let log = Arc::clone(&log);
                move || {
                    for request in server.incoming_requests() {
                        handle(request, &routes, &log);
                    }
                }
            })?;
        Ok(Self {
            addr,
            log,
            server,
            thread: Some(thread),
        })
    }

    /// Starts the demo's routes (`demo_routes`) from the repository at `root`.
    pub fn demo(root: &Path, port: u16) -> io::Result<Self> {
        Self::start(port, demo_routes(root))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the request log.
    pub fn requests(&self) -> RequestCounts {
        lock(&self.log).clone()
    }
}

impl std::fmt::Debug for StaticServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            // A panic in the serving thread has already been printed; nothing to add.
            let _ = thread.join();
        }
    }
}

/// Where a request path leads.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    File(PathBuf),
    Redirect(String),
    NotFound,
}

fn handle(request: Request, routes: &[Route], log: &Log) {
    let url = request.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or("").to_string();
    let method = request.method().clone();
    if path == REQUESTS_PATH {
        let body = lock(log).to_json();
        respond(request, 200, "application/json", body.into_bytes());
        return;
    }
    {
        let mut log = lock(log);
        log.total += 1;
        *log.paths.entry(path.clone()).or_insert(0) += 1;
    }
    if method != Method::Get && method != Method::Head {
        respond(
            request,
            405,
            "text/plain; charset=utf-8",
            b"only GET and HEAD".to_vec(),
        );
        return;
    }
    match resolve(routes, &path) {
        Target::File(file) => match File::open(&file) {
            Ok(f) => {
                let response = Response::from_file(f)
                    .with_header(header("Content-Type", content_type(&file)))
                    .with_header(header("Cache-Control", "no-store"));
                // The client may have gone away; nothing to do about it here.
                let _ = request.respond(response);
            }
            Err(_) => not_found(request, &path),
        },
        Target::Redirect(location) => {
            let response = Response::empty(301)
                .with_header(header("Location", &location))
                .with_header(header("Cache-Control", "no-store"));
            let _ = request.respond(response);
        }
        Target::NotFound => not_found(request, &path),
    }
}

fn not_found(request: Request, path: &str) {
    respond(
        request,
        404,
        "text/plain; charset=utf-8",
        format!("not found: {path}\n").into_bytes(),
    );
}

fn respond(request: Request, status: u16, content_type: &str, body: Vec<u8>) {
    let response = Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"));
    let _ = request.respond(response);
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| panic!("invalid header {name}: {value}"))
}

/// The content type of a file, by extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "wasm" => "application/wasm",
        "js" | "mjs" => "text/javascript",
        "json" | "map" => "application/json",
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream", // .safetensors and anything else
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn resolve(routes: &[Route], raw_path: &str) -> Target {
    let Some(path) = percent_decode(raw_path) else {
        return Target::NotFound;
    };
    if !path.starts_with('/') {
        return Target::NotFound;
    }
    // `/pkg` for the route `/pkg/`: the folder without its slash.
    let with_slash = format!("{path}/");
    if routes.iter().any(|r| r.prefix == with_slash) {
        return Target::Redirect(with_slash);
    }
    let Some(route) = routes.iter().find(|r| path.starts_with(&r.prefix)) else {
        return Target::NotFound;
    };
    let rest = &path[route.prefix.len()..];
    let mut file = route.dir.clone();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        if segment == ".." || segment == "." || segment.contains(['\\', '\0', ':']) {
            return Target::NotFound;
        }
        file.push(segment);
    }
    if file.is_dir() {
        if !path.ends_with('/') {
            return Target::Redirect(format!("{path}/"));
        }
        file.push("index.html");
    }
    // A symlink inside the folder may still point out of it.
    match (file.canonicalize(), route.dir.canonicalize()) {
        (Ok(real), Ok(dir)) if real.starts_with(&dir) && real.is_file() => Target::File(file),
        _ => Target::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    /// Sends one raw HTTP/1.1 request and returns (status, headers lower-cased, body).
    fn get(
        server: &StaticServer,
        method: &str,
        path: &str,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut stream = TcpStream::connect(server.addr()).expect("connect to the server");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr()
        )
        .expect("send the request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the response");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a header block");
        let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII headers");
        let body = raw[split + 4..].to_vec();
        let mut lines = head.lines();
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body)
    }

    fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn site() -> (tempfile::TempDir, StaticServer) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let www = dir.path().join("www");
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(www.join("sub")).expect("mkdir www/sub");
        std::fs::create_dir_all(pkg.join("wasm")).expect("mkdir pkg/wasm");
        std::fs::write(www.join("index.html"), "<h1>home</h1>").expect("write");
        std::fs::write(www.join("sub/index.html"), "<h1>sub</h1>").expect("write");
        std::fs::write(www.join("app.js"), "export {};").expect("write");
        std::fs::write(dir.path().join("secret.txt"), "secret").expect("write");
        std::fs::write(pkg.join("wasm/sd_web_bg.wasm"), b"\0asm\x01\0\0\0").expect("write");
        std::fs::write(pkg.join("a.safetensors"), [7u8; 1000]).expect("write");
        std::fs::write(pkg.join("m.json"), "{}").expect("write");
        let server = StaticServer::start(0, vec![Route::new("/", &www), Route::new("/pkg", &pkg)])
            .expect("start the server");
        (dir, server)
    }

    #[test]
    fn serves_files_with_their_content_types_and_no_store() {
        let (_dir, server) = site();
        assert_ne!(server.addr().port(), 0, "port 0 picks a real port");
        assert!(server.addr().ip().is_loopback());

        let (status, headers, body) = get(&server, "GET", "/");
        assert_eq!(status, 200);
        assert_eq!(body, b"<h1>home</h1>");
        assert_eq!(
            header_of(&headers, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(header_of(&headers, "cache-control"), Some("no-store"));

        for (path, expected) in [
            ("/app.js", "text/javascript"),
            ("/pkg/wasm/sd_web_bg.wasm", "application/wasm"),
            ("/pkg/a.safetensors", "application/octet-stream"),
            ("/pkg/m.json", "application/json"),
            ("/sub/", "text/html; charset=utf-8"),
            ("/app.js?v=2", "text/javascript"),
        ] {
            let (status, headers, _) = get(&server, "GET", path);
            assert_eq!(status, 200, "{path}");
            assert_eq!(
                header_of(&headers, "content-type"),
                Some(expected),
                "{path}"
            );
            assert_eq!(
                header_of(&headers, "cache-control"),
                Some("no-store"),
                "{path}"
            );
        }
        let (_, _, body) = get(&server, "GET", "/pkg/a.safetensors");
        assert_eq!(body, vec![7u8; 1000]);
        let (status, headers, body) = get(&server, "HEAD", "/pkg/a.safetensors");
        assert_eq!(status, 200);
        assert_eq!(header_of(&headers, "content-length"), Some("1000"));
        assert!(body.is_empty(), "HEAD has no body");
    }

    #[test]
    fn missing_files_and_escapes_are_404_and_folders_redirect() {
        let (_dir, server) = site();
        for path in [
            "/missing.js",
            "/../secret.txt",
            "/pkg/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/pkg/%2E%2E/%2e%2e/secret.txt",
            "/sub/..%2f..%2fsecret.txt",
            "/pkg/wasm/..\\..\\secret.txt",
            "/%zz",
        ] {
            let (status, _, body) = get(&server, "GET", path);
            assert_eq!(status, 404, "{path} must be 404");
            assert!(
                !String::from_utf8_lossy(&body).contains("secret\n") && body != b"secret".to_vec(),
                "{path} leaked a file outside the folder"
            );
        }
        let (status, headers, _) = get(&server, "GET", "/sub");
        assert_eq!(status, 301);
        assert_eq!(header_of(&headers, "location"), Some("/sub/"));
        let (status, headers, _) = get(&server, "GET", "/pkg");
        assert_eq!(status, 301);
        assert_eq!(header_of(&headers, "location"), Some("/pkg/"));
        let (status, _, _) = get(&server, "POST", "/app.js");
        assert_eq!(status, 405);
    }

    #[test]
    fn counts_requests_per_path_in_rust_and_over_http() {
        let (_dir, server) = site();
        get(&server, "GET", "/pkg/a.safetensors");
        get(&server, "GET", "/pkg/a.safetensors?x=1");
        get(&server, "GET", "/missing");
        let counts = server.requests();
        assert_eq!(counts.total, 3);
        assert_eq!(counts.count("/pkg/a.safetensors"), 2);
        assert_eq!(counts.count("/missing"), 1);
        assert_eq!(counts.count("/app.js"), 0);

        let (status, headers, body) = get(&server, "GET", REQUESTS_PATH);
        assert_eq!(status, 200);
        assert_eq!(
            header_of(&headers, "content-type"),
            Some("application/json")
        );
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["total"], 3);
        assert_eq!(json["paths"]["/pkg/a.safetensors"], 2);
        assert_eq!(json["paths"]["/missing"], 1);
        assert_eq!(server.requests(), counts, "reading the log is not counted");
    }

    #[test]
    fn stops_on_drop() {
        let (_dir, server) = site();
        let addr = server.addr();
        drop(server);
        // tiny_http's accept thread closes the socket shortly after the server is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} still accepts connections 5 s after the server was dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn content_types() {
        for (file, expected) in [
            ("a.wasm", "application/wasm"),
            ("a.mjs", "text/javascript"),
            ("a.JS", "text/javascript"),
            ("a.css", "text/css"),
            ("a.png", "image/png"),
            ("x/y.safetensors", "application/octet-stream"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(file)), expected, "{file}");
        }
    }
}
