//! `sd`: the native command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sd_cli::{bench, cost, generate, serve};
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
    /// Generate images from a prompt (the built-in digits model unless --model is given).
    Generate(generate::GenerateArgs),
    /// List the models --model takes by name: the presets (hub presets marked downloaded or
    /// not, from the Hugging Face cache, asking no server), then the model folders in
    /// $DIFFUSION_MODELS_PATH and $MODELS_PATH.
    Models {
        #[command(subcommand)]
        action: Option<ModelsCommand>,
    },
    /// Serve the local HTTP API (POST /v1/images/generations, SSE progress, cancel, /health)
    /// with the model loaded once.
    Serve(serve::ServeArgs),
    /// Convert a diffusers model folder or a single-file .safetensors checkpoint (SD 1.x, 2.x,
    /// XL in the original layout) to a diffusers folder of f16 safetensors (half the size),
    /// configs copied; with --web, to the web format (manifest.json + fp16 shards named by
    /// their SHA-256) that the npm package fetches and `--model` also reads.
    Convert {
        /// The diffusers folder or single .safetensors file to read.
        src: PathBuf,
        /// The folder to write (must not exist inside the source).
        dst: PathBuf,
        /// Write the web format instead of a diffusers folder.
        #[arg(long)]
        web: bool,
        /// The model's name in the web manifest (default: the source folder's or file's name).
        #[arg(long, requires = "web")]
        name: Option<String>,
        /// For a single-file source: a folder of diffusers configs to use instead of the
        /// built-in published configs of its architecture.
        #[arg(long, value_name = "DIR")]
        model_config: Option<PathBuf>,
    },
    /// Print the GPU adapter the kernels run on, its limits and the f16 path.
    ///
    /// The adapter can be chosen with SD_ADAPTER (a substring of its name) and WGPU_BACKEND;
    /// SD_EXPECT_BACKEND makes this fail on any other backend; SD_F16=packed forces the
    /// packed f16 path.
    Info,
    /// What one generation costs, from a model's configs alone: per part FLOPs, bytes moved,
    /// dispatches and peak memory, and the ops with the most FLOPs.
    Cost(cost::CostArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// The same list (`sd models` alone lists too).
    List,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// GFLOP/s of matmul, conv and attention at SD 1.5 layer shapes, against the CPU reference.
    Kernels(bench::KernelBenchArgs),
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    runtime_dir::ensure();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: a message that already ends with its
/// cause's text (as `cannot load the model x: <cause>` does) does not repeat it.
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Generate(args) => {
            let report = generate::run(&args, true)?;
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            for (file, seed) in report.files.iter().zip(&report.seeds) {
                println!("wrote {} (seed {seed})", file.display());
            }
            let times: Vec<String> = report
                .timings
                .iter()
                .map(|(stage, t)| format!("{stage} {:.0} ms", t.as_secs_f64() * 1e3))
                .collect();
            println!("time: {}", times.join(", "));
            Ok(())
        }
        Command::Convert {
            src,
            dst,
            web: true,
            name,
            model_config,
        } => {
            let single = SingleFileFolder::new(&src, model_config.as_deref())?;
            let name = name.or_else(|| single.as_ref().map(|s| s.name.clone()));
            let src = single.as_ref().map_or(src.as_path(), |s| s.dir.as_path());
            let report = sd_weights::web::convert_to_web(src, &dst, name.as_deref())?;
            let manifest = &report.manifest;
            println!(
                "{}: {} tensors in {} shards, {:.1} MiB",
                manifest.name,
                manifest.tensors.len(),
                manifest.shards.len(),
                manifest.total_bytes() as f64 / (1 << 20) as f64
            );
            for t in &report.overflowed {
                println!("warning: {t}: values beyond the f16 range became infinite");
            }
            for f in &report.skipped {
                println!("skipped (not UTF-8 text): {f}");
            }
            println!(
                "wrote {}",
                dst.join(sd_weights::web::MANIFEST_FILE).display()
            );
            Ok(())
        }
        Command::Convert {
            src,
            dst,
            model_config,
            ..
        } => {
            let single = SingleFileFolder::new(&src, model_config.as_deref())?;
            let src = single.as_ref().map_or(src.as_path(), |s| s.dir.as_path());
            let report = sd_weights::convert_folder_f16(src, &dst, None)?;
            for component in &report.components {
                println!("{component:?}");
            }
            println!("wrote {}", dst.display());
            Ok(())
        }
        Command::Info => info(),
        Command::Cost(args) => cost::run(&args),
        Command::Models {
            action: None | Some(ModelsCommand::List),
        } => {
            list_models();
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Kernels(args),
        } => {
            let ctx = pollster::block_on(GpuContext::new(ContextOptions::from_env()?))?;
            bench::kernels(&ctx, &args)
        }
    }
}

/// `sd models`: a line per model, then where they were looked for.
fn list_models() {
    let paths = sd_wgsl::ModelPaths::from_env();
    let hub = sd_wgsl::HubConfig::from_env();
    for model in sd_wgsl::list_models_with(&paths, &hub) {
        let (status, about) = match &model.location {
            sd_wgsl::ModelLocation::Preset(preset) => (
                match (preset.hub, model.downloaded) {
                    (None, _) => "built in",
                    (Some(_), true) => "downloaded",
                    (Some(_), false) => "not downloaded",
                },
                match preset.hub {
                    Some(hub) => format!("{} (hub {})", preset.description, hub.repo),
                    None => preset.description.to_string(),
                },
            ),
            location => ("local", location.to_string()),
        };
        println!(
            "{:<14} {:<10} {:<15} {about}",
            model.name, model.format, status
        );
    }
    for (var, folder) in [
        ("DIFFUSION_MODELS_PATH", &paths.diffusion_models),
        ("MODELS_PATH", &paths.models),
    ] {
        match folder {
            Some(folder) => println!("(searched ${var} = {})", folder.display()),
            None => println!("(${var} is not set)"),
        }
    }
    println!(
        "(hub cache {}{}; presets download from {} on first use)",
        hub.cache_dir.display(),
        if hub.offline {
            ", HF_HUB_OFFLINE set"
        } else {
            ""
        },
        hub.endpoint
    );
}

/// A single-file checkpoint written out as a diffusers folder in a temporary folder, for the
/// converters (which read folders); removed when dropped.
#[derive(Debug)]
struct SingleFileFolder {
    dir: PathBuf,
    /// The file's stem, the web model's default name.
    name: String,
}

impl SingleFileFolder {
    /// `None` when `src` is a folder; pickle files are refused.
    fn new(src: &std::path::Path, config: Option<&std::path::Path>) -> Result<Option<Self>> {
        if src.is_dir() {
            return Ok(None);
        }
        let mut options = sd_weights::SingleFileOptions::new();
        options.config_dir = config.map(PathBuf::from);
        let model = sd_weights::open_single_file(src, &options)?;
        println!(
            "{}: {} checkpoint, {} tensors not part of the model",
            src.display(),
            model.architecture.name(),
            model.ignored.len()
        );
        let dir = std::env::temp_dir().join(format!("sd-convert-{}", std::process::id()));
        let folder = Self {
            dir,
            name: src
                .file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
        };
        model.save_folder(&folder.dir)?;
        Ok(Some(folder))
    }
}

impl Drop for SingleFileFolder {
    fn drop(&mut self) {
        // Best effort: a leftover temporary folder is harmless.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn info() -> Result<()> {
    let ctx = pollster::block_on(GpuContext::new(ContextOptions::from_env()?))?;
    println!("adapter: {}", ctx.describe());
    let limits = ctx.limits();
    println!(
        "limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB",
        limits.max_storage_buffer_binding_size >> 20,
        limits.max_buffer_size >> 20,
        limits.max_compute_workgroup_storage_size >> 10
    );
    Ok(())
}

/// Mesa's Vulkan drivers print `error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment.` when that variable is missing (containers, `su`, CI), which reads as a failure
/// although nothing failed. Without a usable one, `sd` gives itself a private runtime folder
/// (mode 0700, as the XDG spec asks) and re-executes itself with it, before any driver loads.
/// Setting the variable in-process would need `unsafe` (`set_var`), which the workspace forbids.
#[cfg(target_os = "linux")]
mod runtime_dir {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};

    fn usable(dir: &Path) -> bool {
        std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o077 == 0)
    }

    pub fn ensure() {
        if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| usable(Path::new(&d))) {
            return;
        }
        let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
            return;
        };
        let dir: PathBuf = std::env::temp_dir().join(format!("sd-wgsl-runtime-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let owned = std::fs::metadata(&dir).is_ok_and(|m| m.uid() == uid);
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        if !owned || !usable(&dir) {
            return;
        }
        // Only returns on failure; then run on without it (the warning is cosmetic).
        let _ = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("XDG_RUNTIME_DIR", &dir)
            .exec();
    }
}
