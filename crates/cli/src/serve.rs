//! `sd serve`: the local HTTP API with the model loaded once.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use sd_kernels::{ContextOptions, DType, GpuContext};
use sd_models::StableDiffusion;
use sd_server::{LoadedModel, ServerConfig};

use crate::generate::model_source;

/// Options of `sd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The port to listen on.
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// The address to listen on (127.0.0.1: only this machine).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// A diffusers or web model folder (default: the embedded digits model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A folder of model folders, listed by GET /v1/models.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Jobs that may wait behind the running one; more get 503 SERVER_BUSY.
    #[arg(long, default_value_t = 8)]
    pub queue_size: usize,
    /// On SIGINT/SIGTERM, let running and waiting jobs finish instead of cancelling them.
    #[arg(long)]
    pub finish_on_shutdown: bool,
}

/// Loads the model and serves until Ctrl-C or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    let config = ServerConfig {
        host: args.host,
        port: args.port,
        queue_size: args.queue_size,
        models_dir: args.models_dir.clone(),
        cancel_on_shutdown: !args.finish_on_shutdown,
        ..ServerConfig::default()
    }
    .with_env()?;
    let (source, name) = model_source(args.model.as_deref())?;
    let start = Instant::now();
    let ctx = pollster::block_on(GpuContext::new(ContextOptions::from_env()?))?;
    let adapter = ctx.describe();
    let model = StableDiffusion::load(Arc::new(ctx), &source, DType::F16)
        .with_context(|| format!("cannot load the model from {}", source.describe()))?;
    eprintln!(
        "loaded {name} in {:.1} s on {adapter}",
        start.elapsed().as_secs_f64()
    );
    sd_server::run_until_signal(config, LoadedModel { name, model }, |addr| {
        eprintln!(
            "listening on http://{addr} (POST /v1/images/generations, GET /health, /openapi.json); Ctrl-C stops"
        );
    })?;
    eprintln!("stopped");
    Ok(())
}
