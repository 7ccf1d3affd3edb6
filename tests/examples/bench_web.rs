//! `cargo xtask bench web`: the digits model's 20-step generation in headless Chromium (WebGPU;
//! Dawn's SwiftShader adapter on a machine without a GPU) against the native pipeline on the
//! same machine in the same run, plus the browser's model load times.
//!
//! Why: the browser path is the product; this says what it costs next to native, and how much
//! the IndexedDB cache saves on the second visit.
//!
//! What: `tests/browser/run.mjs --mode bench` opens a page that imports the npm package
//! (`/pkg/index.js`) in a fresh profile and times a cold `StableDiffusion.load` (empty cache:
//! download, verify, store, upload), one warm-up generation, `--reps` timed generations
//! ("a red digit seven on a blue background", seed 7, euler_a, 20 steps, guidance 5, the
//! model's native size), and a second load after `dispose` (every shard from the cache). Then
//! this process loads the same web model folder natively (f16 weight matrices, the adapter wgpu
//! picks: lavapipe without a GPU), runs one warm-up and the same timed generations. The table
//! gives medians in milliseconds and the browser / native ratio.
//!
//! Run: `cargo xtask bench web` (builds the package and the web model first), or
//! `cargo run --release -p sd-tests --example bench_web [-- --reps N]` when they exist.

#[path = "../common/native.rs"]
mod native;

use std::process::ExitCode;
use std::time::Instant;

use sd_tests::static_server::StaticServer;
use sd_tests::web;
use serde_json::Value;

const PROMPT: &str = "a red digit seven on a blue background";
const SEED: u64 = 7;

fn reps() -> Result<usize, String> {
    let mut reps = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reps" => {
                let value = args.next().ok_or("--reps needs a value")?;
                reps = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(format!("--reps: `{value}` is not a count of at least 1"))?;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: bench_web [--reps N]"
                ));
            }
        }
    }
    Ok(reps)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn ms(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench web: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let reps = reps()?;
    let root = web::project_root();
    let model_dir = web::ensure_web_model(&root)?;
    let missing = web::missing_prerequisites(&root);
    if !missing.is_empty() {
        return Err(format!("cannot run:\n  {}", missing.join("\n  ")));
    }

    // The browser.
    let out = web::target_dir(&root).join("browser-bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let server =
        StaticServer::demo(&root, 0).map_err(|e| format!("cannot start the server: {e}"))?;
    println!("browser: headless Chromium against {}", server.url());
    let driver_ok = web::run_driver(
        &root,
        &server.url(),
        &out,
        "bench",
        &["--reps".to_string(), reps.to_string()],
    )?;
    drop(server);
    let file = out.join("bench.json");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let results: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if !driver_ok {
        return Err(format!(
            "the browser run failed: {} (details in {})",
            results["error"].as_str().unwrap_or("no error recorded"),
            file.display()
        ));
    }
    let bench = &results["bench"];
    let mut browser_runs: Vec<f64> = bench["generateMs"]
        .as_array()
        .map(|a| a.iter().map(ms).collect())
        .unwrap_or_default();
    let browser_gen = median(&mut browser_runs);

    // Natively, in this process.
    println!("native: loading {}", model_dir.display());
    let start = Instant::now();
    let model = native::load(&model_dir)?;
    let native_load = start.elapsed().as_secs_f64() * 1e3;
    let params = native::params(&model, PROMPT, SEED);
    let start = Instant::now();
    native::generate(&model, &params)?;
    let native_warmup = start.elapsed().as_secs_f64() * 1e3;
    let mut native_runs = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        native::generate(&model, &params)?;
        native_runs.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let native_gen = median(&mut native_runs);

    let size = format!("{}x{}", params.width, params.height);
    println!();
    println!(
        "digits model, {size}, {} steps euler_a, guidance {}, CFG; median of {reps}",
        native::STEPS,
        native::GUIDANCE
    );
    println!(
        "browser: {} (adapter: {}, shader-f16: {})",
        results["userAgent"].as_str().unwrap_or("?"),
        bench["info"]["adapter"].as_str().unwrap_or("?"),
        bench["info"]["shaderF16"]
    );
    println!("native:  {}", model.networks().describe());
    println!();
    println!("| what | browser ms | native ms | browser / native |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| {}-step generation | {browser_gen:.0} | {native_gen:.0} | {:.2} |",
        native::STEPS,
        browser_gen / native_gen
    );
    println!(
        "| warm-up generation (first, compiles pipelines) | {:.0} | {native_warmup:.0} | {:.2} |",
        ms(&bench["warmupMs"]),
        ms(&bench["warmupMs"]) / native_warmup
    );
    println!(
        "| cold load (empty cache: download, verify, store, upload; native: read files, upload) | {:.0} | {native_load:.0} | {:.2} |",
        ms(&bench["cold"]["ms"]),
        ms(&bench["cold"]["ms"]) / native_load
    );
    println!(
        "| cached load (after dispose; {} of {} shards from the cache, {} shard requests) | {:.0} | | |",
        bench["cached"]["fromCache"],
        bench["cached"]["shardsTotal"],
        bench["cached"]["shardRequests"],
        ms(&bench["cached"]["ms"])
    );
    println!();
    println!("raw browser numbers: {}", file.display());
    Ok(())
}
