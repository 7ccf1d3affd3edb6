//! `cargo xtask`: the project's tasks. `test` runs every test of the workspace, the browser
//! tests included; `build-wasm` makes the npm package, `convert` the web model, `serve` the demo;
//! `bench` and `bench web` / `bench kernels` measure.

mod bench;
mod fuzz;
mod schemathesis;
mod setup;
mod wasm;
mod web;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  run [OPTIONS]     generate an image: the options of `sd generate` (--prompt, --steps, --seed,
                    --sampler, --width, --height, --count, --out, --model, ...; --help lists them)
  test              every test of the workspace (native, on the GPU adapter wgpu picks: lavapipe
                    without a GPU; SD_DEVICE=gpu unless set, so the WGSL path is what runs), the
                    browser tests in headless Chromium included; first installs what is missing
                    (as root on Debian/Ubuntu: Vulkan driver, Chromium, Node.js/npm; the wasm32
                    target; wasm-bindgen-cli; the Node driver), builds the npm package and the
                    web model
  fuzz [--seconds N] [TARGET...]
                    the cargo-fuzz targets (fuzz/: safetensors, single_file, web_manifest,
                    configs, requests, multipart, images), N seconds each (30), from the
                    committed seeds; installs the pinned nightly and cargo-fuzz if missing
  schemathesis [--examples N] [--seed N]
                    the HTTP fuzzer schemathesis (PyPI, into a venv) against `sd serve`'s
                    /openapi.json: no 5xx, no answer off its schema (20 examples per operation)
  pack              the npm tarball: build-wasm, then `npm pack` into target/npm/
  build-wasm        the npm package in target/npm/sd-wgsl: sd-web for wasm32 (release) through
                    wasm-bindgen (installed at the Cargo.lock version if missing), plus
                    crates/web/js
  convert [SRC DST] a diffusers folder or a single-file .safetensors checkpoint to the web
                    format (manifest.json + shards); default:
                    the embedded model (crates/sd/model) to target/web-models/digits
  serve [--port N]  build-wasm, convert, then serve the demo at http://127.0.0.1:8080 (or N)
  bench             the digits model at 64x64, 20 steps, CFG: per stage and whole, against
                    candle-transformers on the CPU in the same run
  bench web         the 20-step generation in headless Chromium vs natively in the same run,
                    and the browser's cold and cached model loads
  bench kernels     GFLOP/s of matmul, conv and attention at SD 1.5 shapes, with the CPU reference
  bench sd15 [--against REV] [--size N] [--steps N] [--reps N] [--json PATH (not with --against)]
                    SD 1.5 (random f16 weights): per part, op family and block, GPU time,
                    TFLOP/s, GB/s and dispatches; a whole generation's per-step work; the
                    projected 20-step 512x512 time. --against REV: REV's build too, in the same
                    invocation, and the speed-ups
  cost --model DIR [--size N] [--no-cfg]
                    FLOPs, bytes moved, dispatches and peak memory per part, and the top ops by
                    FLOPs, from a model's configs alone (e.g. --model tests/configs/sd21)
  info              the adapter the kernels run on";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    let root = project_root()?;
    sh.change_dir(&root);
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["test", rest @ ..] => test(&sh, &root, rest),
        ["run", rest @ ..] => {
            // `sd` prints its own errors; pass its exit code on without an xtask trace.
            let status = std::process::Command::new(env!("CARGO"))
                .args(["run", "--quiet", "-p", "sd-cli", "--", "generate"])
                .args(rest)
                .current_dir(&root)
                .status()
                .context("cannot run cargo")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        ["schemathesis", rest @ ..] => schemathesis::command(&sh, &root, rest),
        ["fuzz", rest @ ..] => fuzz::command(&sh, &root, rest),
        ["build-wasm"] => wasm::build(&sh, &root),
        ["pack"] => wasm::pack(&sh, &root).map(|tarball| println!("{}", tarball.display())),
        ["convert"] => web::convert_default(&sh, &root),
        ["convert", src, dst] => web::convert(&sh, src, dst, &[]),
        ["serve", rest @ ..] => web::serve(&sh, &root, rest),
        ["bench", "kernels", rest @ ..] => stage("bench kernels (release)", || {
            Ok(cmd!(
                sh,
                "cargo run --release --quiet -p sd-cli -- bench kernels {rest...}"
            )
            .run()?)
        }),
        ["bench", "web", rest @ ..] => web::bench(&sh, &root, rest),
        ["bench", "sd15", rest @ ..] => bench::sd15(&sh, &root, rest),
        ["bench", rest @ ..] => stage("bench pipeline (release)", || {
            Ok(cmd!(
                sh,
                "cargo run --release --quiet -p sd-tests --example bench_pipeline -- {rest...}"
            )
            .run()?)
        }),
        ["info"] => Ok(cmd!(sh, "cargo run --quiet -p sd-cli -- info").run()?),
        ["cost", rest @ ..] => Ok(cmd!(sh, "cargo run --quiet -p sd-cli -- cost {rest...}").run()?),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown command: {}", args.join(" "))
        }
    }
}

fn test(sh: &Shell, root: &Path, extra: &[&str]) -> Result<()> {
    let total = Instant::now();
    setup::ensure(sh)?;
    // Mesa warns on every Vulkan start without a runtime folder; give the tests a private one.
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_dir());
    let _runtime = match runtime {
        Some(_) => None,
        None => {
            let dir = target_dir(root).join("xdg-runtime");
            std::fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
            Some(sh.push_env("XDG_RUNTIME_DIR", dir))
        }
    };
    // The tests prove the WGSL path, on lavapipe where there is no GPU: `auto` would pick the
    // CPU backend there. The CPU backend's tests ask for it by name.
    let _device = std::env::var_os("SD_DEVICE")
        .is_none()
        .then(|| sh.push_env("SD_DEVICE", "gpu"));
    // One native build for everything: the tests' build of `sd` also converts the web model and
    // prints the adapter (a `cargo run -p sd-cli` would build sd-cli's graph a second time,
    // with other features).
    stage("build the workspace's tests", || {
        Ok(cmd!(sh, "cargo test --workspace --no-run {extra...}").run()?)
    })?;
    let sd = target_dir(root).join("debug/sd");
    wasm::pack(sh, root)?;
    web::convert_default_with(sh, root, Some(&sd))?;
    web::browser_prerequisites(sh, root)?;
    stage("adapter", || Ok(cmd!(sh, "{sd} info").run()?))?;
    stage("cargo test --workspace", || {
        Ok(cmd!(sh, "cargo test --workspace {extra...}").run()?)
    })?;
    schemathesis::run(sh, root, &sd, schemathesis::CI_EXAMPLES, 1)?;
    fuzz::run(sh, root, 30, &fuzz::TARGETS)?;
    println!(
        "xtask test: all stages passed in {:.0} s",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs one stage and prints how long it took, so growth is seen before it bites.
fn stage<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let start = Instant::now();
    let result = f().with_context(|| format!("stage failed: {name}"));
    println!("<== {name}: {:.1} s", start.elapsed().as_secs_f64());
    result
}

fn project_root() -> Result<PathBuf> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("run through `cargo xtask`")?;
    Ok(Path::new(&manifest)
        .parent()
        .context("xtask lives in the workspace root")?
        .to_path_buf())
}

/// Cargo's target folder: `CARGO_TARGET_DIR` when set, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}
