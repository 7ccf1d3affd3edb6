//! `sd`: the native command line.

mod bench;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sd_kernels::{ContextOptions, GpuContext};

#[derive(Debug, Parser)]
#[command(
    name = "sd",
    version,
    about = "Stable Diffusion on WGSL compute shaders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the GPU adapter the kernels run on, its limits and the f16 path.
    ///
    /// The adapter can be chosen with SD_ADAPTER (a substring of its name) and WGPU_BACKEND;
    /// SD_EXPECT_BACKEND makes this fail on any other backend; SD_F16=packed forces the
    /// packed f16 path.
    Info,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// GFLOP/s of matmul, conv and attention at SD 1.5 layer shapes, against the CPU reference.
    Kernels(bench::KernelBenchArgs),
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let ctx = pollster::block_on(GpuContext::new(ContextOptions::from_env()?))?;
    match cli.command {
        Command::Info => {
            println!("adapter: {}", ctx.describe());
            let limits = ctx.limits();
            println!(
                "limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB",
                limits.max_storage_buffer_binding_size >> 20,
                limits.max_buffer_size >> 20,
                limits.max_compute_workgroup_storage_size >> 10
            );
        }
        Command::Bench {
            what: BenchCommand::Kernels(args),
        } => bench::kernels(&ctx, &args)?,
    }
    Ok(())
}
