//! A stand-in for the Hugging Face hub on 127.0.0.1: serves one folder as a repository in the
//! hub's file layout (`/{repo}/resolve/{revision}/{path}`, with the `etag`, `x-repo-commit`,
//! `content-range` and `content-length` headers hf-hub reads, and byte ranges), logs every
//! request, and can cut a file's body short to test resumption. `*.fp16.safetensors` asked
//! for and absent are served from the plain `*.safetensors` (the fixtures have no variant).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The commit every file is served at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A running mirror; it serves until the test process ends.
#[derive(Debug)]
pub struct Mirror {
    /// `http://127.0.0.1:PORT`: the `HF_ENDPOINT`.
    pub url: String,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    repo: String,
    folder: PathBuf,
    /// `"{path} {range}"` of each request, in order.
    log: Mutex<Vec<String>>,
    /// `(path, bytes, times)`: the next `times` bodies of `path` (not the 1-byte metadata
    /// probes) stop after `bytes` bytes and the connection closes.
    cut: Mutex<Option<(String, usize, usize)>>,
}

impl Mirror {
    /// Serves `folder` as the hub repository `repo` (`org/name`).
    pub fn serve(repo: &str, folder: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mirror");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(State {
            repo: repo.into(),
            folder: folder.into(),
            log: Mutex::new(Vec::new()),
            cut: Mutex::new(None),
        });
        let serving = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&serving);
                std::thread::spawn(move || {
                    let _ = handle(&state, stream);
                });
            }
        });
        Self { url, state }
    }

    /// The requests so far, as `"{path} {range}"` (`-` without a range).
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().expect("log").clone()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.state.log.lock().expect("log").clear();
    }

    /// The next `times` downloads of `path` send `bytes` bytes of their body, then close.
    pub fn cut_short(&self, path: &str, bytes: usize, times: usize) {
        *self.state.cut.lock().expect("cut") = Some((path.into(), bytes, times));
    }

    /// The bytes served for `path`.
    pub fn bytes_of(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.state.file(path).expect("a served file")).expect("read")
    }
}

impl State {
    fn file(&self, path: &str) -> Option<PathBuf> {
        let direct = self.folder.join(path);
        if direct.is_file() {
            return Some(direct);
        }
        let plain = self
            .folder
            .join(path.replace(".fp16.safetensors", ".safetensors"));
        plain.is_file().then_some(plain)
    }
}

fn handle(state: &State, mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    state
        .log
        .lock()
        .expect("log")
        .push(format!("{target} {}", range.as_deref().unwrap_or("-")));
    let prefix = format!("/{}/resolve/", state.repo);
    let file = target
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once('/'))
        .map(|(_revision, path)| path.to_string());
    let Some((path, full)) = file.and_then(|path| Some((path.clone(), state.file(&path)?))) else {
        let body = b"Entry not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )?;
        return stream.write_all(body);
    };
    let bytes = std::fs::read(full)?;
    let size = bytes.len();
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    let etag = format!("{:016x}{size:x}", hasher.finish());
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) => {
            let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
            let start: usize = a.parse().unwrap_or(0);
            let end = b.parse::<usize>().map_or(size, |b| (b + 1).min(size));
            (start, end)
        }
        None => (0, size),
    };
    if start >= end {
        return write!(
            stream,
            "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{size}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\netag: \"{etag}\"\r\nx-repo-commit: {COMMIT}\r\n\
         content-range: bytes {start}-{}/{size}\r\ncontent-length: {}\r\n\
         accept-ranges: bytes\r\nconnection: close\r\n\r\n",
        end - 1,
        end - start
    )?;
    let mut body = &bytes[start..end];
    let probe = end - start == 1;
    if !probe {
        let mut cut = state.cut.lock().expect("cut");
        if let Some((cut_path, keep, times)) = cut.as_mut()
            && *cut_path == path
            && *times > 0
        {
            *times -= 1;
            body = &body[..(*keep).min(body.len())];
        }
    }
    stream.write_all(body)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}
