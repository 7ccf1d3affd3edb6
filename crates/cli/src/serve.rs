//! `sd serve`: the local HTTP API with the model loaded once.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use sd_server::ServerConfig;
use sd_wgsl::{Device, LoadOptions, Model};

use crate::generate::DEFAULT_MODEL;

/// Options of `sd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The port to listen on.
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// The address to listen on (127.0.0.1: only this machine).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// A preset (`digits`, built in: the default; hub presets such as `sd15` download into
    /// the Hugging Face cache on first use), a model folder (diffusers or web format), a
    /// single-file .safetensors checkpoint, or a folder or file name under
    /// $DIFFUSION_MODELS_PATH, then $MODELS_PATH.
    #[arg(long)]
    pub model: Option<String>,
    /// With a single-file .safetensors --model: a folder of diffusers configs to use instead
    /// of the built-in published configs of the checkpoint's architecture.
    #[arg(long, value_name = "DIR", requires = "model")]
    pub model_config: Option<PathBuf>,
    /// A folder of model folders, listed by GET /v1/models before those of
    /// $DIFFUSION_MODELS_PATH and $MODELS_PATH.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Jobs that may wait behind the running one; more get 503 SERVER_BUSY.
    #[arg(long, default_value_t = 8)]
    pub queue_size: usize,
    /// Where the model runs: auto (a hardware GPU if wgpu finds one, else the CPU backend),
    /// gpu or cpu. GET /health and GET /v1/models say which.
    #[arg(long, env = "SD_DEVICE", default_value = "auto", value_parser = crate::generate::parse_device)]
    pub device: Device,
    /// On SIGINT/SIGTERM, let running and waiting jobs finish instead of cancelling them.
    #[arg(long)]
    pub finish_on_shutdown: bool,
    /// Require `Authorization: Bearer <KEY>` on every route but /health.
    #[arg(long, env = "SD_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// An origin (`https://app.example`) whose web pages may call the API (CORS); repeat for
    /// more. Writes from any other origin are refused with 403.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Stop a job that runs longer than this many seconds (it fails with JOB_TIMEOUT).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub job_timeout: Option<Duration>,
    /// Open connections at most; more wait to be accepted.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_connections: u32,
    /// When the GPU device is lost or the worker dies, exit (status 75) for a supervisor to
    /// restart the server, instead of loading the model again in-process.
    #[arg(long)]
    pub exit_on_device_loss: bool,
}

/// `--job-timeout`: positive seconds.
fn parse_seconds(value: &str) -> std::result::Result<Duration, String> {
    let seconds: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 * 7.0) {
        return Err(format!("{value}: expected seconds in (0, 604800]"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Loads the model and serves until Ctrl-C or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    let start = Instant::now();
    let spec = args.model.as_deref().unwrap_or(DEFAULT_MODEL).to_owned();
    let mut load_options = LoadOptions::new().device(args.device);
    load_options.model_config = args.model_config.clone();
    let config = ServerConfig {
        host: args.host,
        port: args.port,
        queue_size: args.queue_size,
        models_dir: args.models_dir.clone(),
        cancel_on_shutdown: !args.finish_on_shutdown,
        job_timeout: args.job_timeout,
        api_key: args.api_key.clone(),
        cors_origins: args.cors_origins.clone(),
        limits: sd_server::connections::Limits {
            max_connections: args.max_connections as usize,
            ..Default::default()
        },
        exit_on_device_loss: args.exit_on_device_loss,
        // After a lost device, the same model on a new GPU context (from the files on disk or
        // in the hub cache: no download).
        reload: Some(sd_server::Reloader::new({
            let (spec, options) = (spec.clone(), load_options.clone());
            move || Model::load_with(&spec, &options).map_err(|e| e.to_string())
        })),
        ..ServerConfig::default()
    }
    .with_env()?;
    config.check()?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let bar = indicatif::ProgressBar::new(0);
    let mut download = crate::download::DownloadReporter::new(bar.clone());
    let model = crate::generate::load_model(&spec, &load_options, &mut download)?;
    bar.finish_and_clear();
    if let Some(note) = model.device_note() {
        eprintln!("note: {note}");
    }
    let adapter = model.device_description();
    let name = model.name().to_string();
    eprintln!(
        "loaded {name} in {:.1} s on {adapter}",
        start.elapsed().as_secs_f64()
    );
    sd_server::run_until_signal(config, model, |addr| {
        eprintln!(
            "listening on http://{addr} (POST /v1/images/generations, GET /health, /openapi.json); Ctrl-C stops"
        );
    })?;
    eprintln!("stopped");
    Ok(())
}
