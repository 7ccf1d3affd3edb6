//! `sd cost`: what one generation costs, counted from a model's configs alone (no weights, no
//! GPU): per part FLOPs, bytes moved, dispatches and peak memory (weights plus activations,
//! from the memory plan at WebGPU's default limits), then the ops with the most FLOPs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sd_models::cost::{CostReport, cost};
use sd_models::plan::{DeviceLimits, PlanRequest, plan};
use sd_models::{ModelSource, NetworkConfigFiles};

/// `sd cost` options.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// A diffusers model folder; only its `*/config.json` files are read.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Images per UNet call.
    #[arg(long, default_value_t = 1)]
    pub images: u32,
    /// Without classifier-free guidance (UNet batch 1 per image: Turbo, LCM).
    #[arg(long)]
    pub no_cfg: bool,
    /// How many ops to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// Prints the cost report of `args`.
///
/// # Errors
///
/// A config that cannot be read or parsed, an unsupported architecture or size.
pub fn run(args: &CostArgs) -> Result<()> {
    let files = NetworkConfigFiles::read(&ModelSource::folder(&args.model))
        .with_context(|| format!("reading the configs of {}", args.model.display()))?;
    let configs = files.configs();
    let request = PlanRequest {
        width: args.size,
        height: args.size,
        images: args.images,
        classifier_free_guidance: !args.no_cfg,
    };
    let mut parts = cost(&configs, &request)?;
    let limits = DeviceLimits::WEBGPU_DEFAULT;
    match plan(&configs, &request, &limits) {
        Ok(memory) => {
            for part in &mut parts {
                part.peak_bytes = memory.part(part.part).map(|p| {
                    p.summary
                        .weight_bytes
                        .saturating_add(p.summary.activation_peak)
                });
            }
        }
        Err(error) => println!("no memory plan at WebGPU's default limits: {error}"),
    }
    println!(
        "{} at {}x{}, {} image(s), UNet batch {}",
        args.model.display(),
        args.size,
        args.size,
        args.images,
        request.unet_batch()
    );
    print!(
        "{}",
        CostReport {
            parts: &parts,
            top: args.top
        }
    );
    Ok(())
}
