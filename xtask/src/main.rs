//! `cargo xtask`: the project's tasks. `test` runs every test of the workspace and builds the
//! kernel layer for the browser target; `bench kernels` runs the kernel benchmarks in release.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  run [OPTIONS]   generate an image: the options of `sd generate` (--prompt, --steps, --seed,
                  --sampler, --width, --height, --count, --out, --model, ...; --help lists them)
  test            every test of the workspace (native, on the GPU adapter wgpu picks: lavapipe
                  without a GPU), after building the kernel layer for wasm32-unknown-unknown
  bench           the digits model at 64x64, 20 steps, CFG: per stage and whole, against
                  candle-transformers on the CPU in the same run
  bench kernels   GFLOP/s of matmul, conv and attention at SD 1.5 shapes, with the CPU reference
  info            the adapter the kernels run on";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    sh.change_dir(project_root()?);
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["test", rest @ ..] => test(&sh, rest),
        ["run", rest @ ..] => {
            // `sd` prints its own errors; pass its exit code on without an xtask trace.
            let status = std::process::Command::new(env!("CARGO"))
                .args(["run", "--quiet", "-p", "sd-cli", "--", "generate"])
                .args(rest)
                .current_dir(project_root()?)
                .status()
                .context("cannot run cargo")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        ["bench", "kernels", rest @ ..] => stage("bench kernels (release)", || {
            Ok(cmd!(
                sh,
                "cargo run --release --quiet -p sd-cli -- bench kernels {rest...}"
            )
            .run()?)
        }),
        ["bench", rest @ ..] => stage("bench pipeline (release)", || {
            Ok(cmd!(
                sh,
                "cargo run --release --quiet -p sd-tests --example bench_pipeline -- {rest...}"
            )
            .run()?)
        }),
        ["info"] => Ok(cmd!(sh, "cargo run --quiet -p sd-cli -- info").run()?),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown command: {}", args.join(" "))
        }
    }
}

fn test(sh: &Shell, extra: &[&str]) -> Result<()> {
    let total = Instant::now();
    stage(
        "build sd-kernels and sd-web for wasm32-unknown-unknown",
        || {
            Ok(cmd!(
                sh,
                "cargo build --quiet --target wasm32-unknown-unknown -p sd-kernels -p sd-web"
            )
            .run()?)
        },
    )?;
    stage("adapter", || {
        Ok(cmd!(sh, "cargo run --quiet -p sd-cli -- info").run()?)
    })?;
    stage("cargo test --workspace", || {
        Ok(cmd!(sh, "cargo test --workspace {extra...}").run()?)
    })?;
    println!(
        "xtask test: all stages passed in {:.0} s",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs one stage and prints how long it took, so growth is seen before it bites.
fn stage(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("==> {name}");
    let start = Instant::now();
    let result = f().with_context(|| format!("stage failed: {name}"));
    println!("<== {name}: {:.1} s", start.elapsed().as_secs_f64());
    result
}

fn project_root() -> Result<std::path::PathBuf> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("run through `cargo xtask`")?;
    Ok(std::path::Path::new(&manifest)
        .parent()
        .context("xtask lives in the workspace root")?
        .to_path_buf())
}
