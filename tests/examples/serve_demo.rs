//! `cargo xtask serve`: the demo page on a local static server until Ctrl-C.
//!
//! Routes (the contract): `/` is `www/`, `/pkg/` the npm package in
//! `target/npm/sd-wgsl/` (`cargo xtask build-wasm`), `/models/digits/` the embedded model in the
//! web format in `target/web-models/digits/` (`cargo xtask convert`), `/__requests` the request
//! log as JSON. Bound to 127.0.0.1, which browsers treat as a secure context (WebGPU needs one).
//!
//! Run: `cargo run -p sd-tests --example serve_demo [-- --port 8080]` (`--port 0`: any free port).

use std::process::ExitCode;

use sd_tests::static_server::StaticServer;
use sd_tests::web;

fn port() -> Result<u16, String> {
    let mut port = 8080;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number (0..=65535)"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: serve_demo [--port N]   (default 8080; 0 picks a free port)".into(),
                );
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: serve_demo [--port N]"
                ));
            }
        }
    }
    Ok(port)
}

fn main() -> ExitCode {
    let port = match port() {
        Ok(port) => port,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let root = web::project_root();
    let missing: Vec<String> = [
        (
            web::npm_package_dir(&root).join("index.js"),
            "cargo xtask build-wasm",
        ),
        (
            web::web_model_dir(&root).join("manifest.json"),
            "cargo xtask convert",
        ),
    ]
    .into_iter()
    .filter(|(path, _)| !path.is_file())
    .map(|(path, fix)| format!("  {} is missing: run `{fix}`", path.display()))
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "warning: the page will not work yet:\n{}",
            missing.join("\n")
        );
    }
    let server = match StaticServer::demo(&root, port) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{e} (is another server on that port? try --port 0)");
            return ExitCode::FAILURE;
        }
    };
    println!("serving the demo at {}/", server.url());
    println!(
        "open it in a browser with WebGPU (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows);"
    );
    println!(
        "request log: {}/__requests. Stop with Ctrl-C.",
        server.url()
    );
    loop {
        std::thread::park();
    }
}
