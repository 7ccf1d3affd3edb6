//! Where a model comes from: a preset name, a path, or a name under the models folders
//! (`$DIFFUSION_MODELS_PATH`, then `$MODELS_PATH`), as other Rust diffusion back ends resolve
//! them.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use sd_core::sampler::SamplerKind;
use sd_models::ModelSource;

use crate::error::{Error, Result};
use crate::hub::{DownloadProgress, HubConfig, HubRepo};

/// A model known by name, needing no path: built in, or a diffusers pipeline on the Hugging
/// Face hub, downloaded into the hub's cache the first time it is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// The name to load it by.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// Where its files are on the hub; `None` for the built-in model.
    pub hub: Option<HubRepo>,
    /// The size it was trained at (width, height), its default output size.
    pub native_size: (u32, u32),
    /// A distilled model's own steps, guidance scale and sampler (what its model card
    /// says), the defaults of requests that leave them out; `None`: the usual ones.
    pub distilled: Option<Distilled>,
}

/// The settings a distilled model is meant to run with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distilled {
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale (at most 1: no unconditional pass).
    pub guidance_scale: f32,
    /// The sampler (the repository's scheduler).
    pub sampler: SamplerKind,
}

/// An SD 1.x / 2.x pipeline's files with fp16 weights (`*.fp16.safetensors`).
const SD_FP16: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
];

/// An SD 1.x pipeline's files, for repositories without an fp16 variant.
const SD_F32: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// An SDXL pipeline's files with fp16 weights: two text encoders and tokenizers.
const SDXL_FP16: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
];

const fn hub(repo: &'static str, files: &'static [&'static str], fp16: bool) -> Option<HubRepo> {
    Some(HubRepo {
        repo,
        revision: "main",
        files,
        variant: if fp16 { Some("fp16") } else { None },
    })
}

/// The presets: the built-in digits model, then well-known hub pipelines (fp16 weights where
/// the repository has them).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "digits",
        description: "the built-in tiny Stable Diffusion of coloured digits (64x64), no download",
        hub: None,
        native_size: (64, 64),
        distilled: None,
    },
    Preset {
        name: "sd15",
        description: "Stable Diffusion 1.5 (512x512, fp16, about 2 GB)",
        hub: hub("stable-diffusion-v1-5/stable-diffusion-v1-5", SD_FP16, true),
        native_size: (512, 512),
        distilled: None,
    },
    Preset {
        name: "sd21",
        description: "Stable Diffusion 2.1, v-prediction (768x768, fp16, about 2.6 GB)",
        hub: hub("stabilityai/stable-diffusion-2-1", SD_FP16, true),
        native_size: (768, 768),
        distilled: None,
    },
    Preset {
        name: "sd-turbo",
        description: "SD-Turbo: SD 2.1 distilled to 1-4 steps, no guidance (512x512, fp16, about 2.6 GB)",
        hub: hub("stabilityai/sd-turbo", SD_FP16, true),
        native_size: (512, 512),
        distilled: Some(Distilled {
            steps: 1,
            guidance_scale: 0.0,
            sampler: SamplerKind::EULER,
        }),
    },
    Preset {
        name: "sdxl",
        description: "Stable Diffusion XL base 1.0 (1024x1024, fp16, about 7 GB)",
        hub: hub("stabilityai/stable-diffusion-xl-base-1.0", SDXL_FP16, true),
        native_size: (1024, 1024),
        distilled: None,
    },
    Preset {
        name: "sdxl-turbo",
        description: "SDXL-Turbo: SDXL distilled to 1-4 steps, no guidance (512x512, fp16, about 7 GB)",
        hub: hub("stabilityai/sdxl-turbo", SDXL_FP16, true),
        native_size: (512, 512),
        distilled: Some(Distilled {
            steps: 1,
            guidance_scale: 0.0,
            sampler: SamplerKind::EULER_A,
        }),
    },
    Preset {
        name: "lcm",
        description: "LCM Dreamshaper v7: latent consistency model, 4-8 steps (768x768, f32, about 4.3 GB)",
        hub: hub("SimianLuo/LCM_Dreamshaper_v7", SD_F32, false),
        native_size: (768, 768),
        distilled: Some(Distilled {
            steps: 4,
            guidance_scale: 8.5,
            sampler: SamplerKind::LCM,
        }),
    },
];

/// The models folders, in the order names are looked up in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelPaths {
    /// `$DIFFUSION_MODELS_PATH`.
    pub diffusion_models: Option<PathBuf>,
    /// `$MODELS_PATH`.
    pub models: Option<PathBuf>,
}

impl ModelPaths {
    /// The folders the environment names (unset or empty variables: none).
    pub fn from_env() -> Self {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            diffusion_models: var("DIFFUSION_MODELS_PATH"),
            models: var("MODELS_PATH"),
        }
    }

    /// `(variable, folder)` for each folder set, in lookup order.
    fn folders(&self) -> Vec<(&'static str, &Path)> {
        [
            ("DIFFUSION_MODELS_PATH", self.diffusion_models.as_deref()),
            ("MODELS_PATH", self.models.as_deref()),
        ]
        .into_iter()
        .filter_map(|(var, path)| path.map(|p| (var, p)))
        .collect()
    }
}

/// Where a model name led.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    /// A preset.
    Preset(Preset),
    /// A model folder (diffusers layout, or a web model with `manifest.json`).
    Path(PathBuf),
}

impl fmt::Display for ModelLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Preset(Preset {
                name,
                hub: Some(hub),
                ..
            }) => write!(f, "preset `{name}` (hub {}@{})", hub.repo, hub.revision),
            Self::Preset(preset) => write!(f, "preset `{}`", preset.name),
            Self::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl ModelLocation {
    /// The model's files and its name; a hub preset not in the cache is downloaded first
    /// (per `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_OFFLINE`), `on_download` hearing its bytes.
    pub(crate) fn open(
        &self,
        on_download: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<(ModelSource, String)> {
        match self {
            Self::Preset(preset) => match preset.hub {
                None => Ok((crate::embedded::source(), crate::embedded::NAME.into())),
                Some(hub) => {
                    let path = fetch(preset, &HubConfig::from_env(), on_download)?;
                    let source = ModelSource::Folder {
                        path,
                        variant: hub.variant.map(String::from),
                    };
                    Ok((source, preset.name.into()))
                }
            },
            Self::Path(path) => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string());
                let source = ModelSource::open(path).map_err(|source| Error::Load {
                    model: path.display().to_string(),
                    source: Box::new(source),
                })?;
                Ok((source, name))
            }
        }
    }
}

/// A hub preset's snapshot folder, downloaded as needed.
#[cfg(feature = "hub")]
fn fetch(
    preset: &Preset,
    config: &HubConfig,
    on_download: &mut dyn FnMut(&DownloadProgress),
) -> Result<PathBuf> {
    crate::hub::download_preset(preset, config, on_download)
}

/// Without the `hub` feature a preset loads only from the cache.
#[cfg(not(feature = "hub"))]
fn fetch(
    preset: &Preset,
    config: &HubConfig,
    _on_download: &mut dyn FnMut(&DownloadProgress),
) -> Result<PathBuf> {
    match crate::hub::cached_preset(preset, config) {
        Ok(Some(path)) => Ok(path),
        Ok(None) => unreachable!("only hub presets are fetched"),
        Err(Error::Offline { missing, .. }) => Err(Error::Download {
            preset: preset.name.into(),
            file: missing.join(", "),
            message: "not in the hub cache, and this build has no hub downloads (the `hub` \
                      feature of sd-wgsl)"
                .into(),
        }),
        Err(other) => Err(other),
    }
}

/// Resolves `model`: a preset name; else an existing folder at that path; else a folder of that
/// name under `paths.diffusion_models`, then `paths.models`.
///
/// ```
/// use sd_wgsl::{ModelLocation, ModelPaths, resolve};
///
/// let dir = tempfile::tempdir()?;
/// std::fs::create_dir(dir.path().join("my-model"))?;
/// let paths = ModelPaths { diffusion_models: Some(dir.path().into()), models: None };
///
/// assert!(matches!(resolve("digits", &paths)?, ModelLocation::Preset(_)));
/// assert_eq!(resolve("my-model", &paths)?, ModelLocation::Path(dir.path().join("my-model")));
/// assert!(resolve("../my-model", &paths).is_err(), "names stay inside the models folders");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`Error::ModelName`] for an empty name, or a name with `..`, a root or a drive that is not
/// an existing folder; [`Error::ModelNotFound`] listing every place looked at.
pub fn resolve(model: &str, paths: &ModelPaths) -> Result<ModelLocation> {
    if let Some(preset) = PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(model)) {
        return Ok(ModelLocation::Preset(*preset));
    }
    let refused = |reason: &str| Error::ModelName {
        name: model.into(),
        reason: reason.into(),
    };
    if model.trim().is_empty() {
        return Err(refused(
            "empty; give a preset name, a path or a folder name",
        ));
    }
    let as_path = Path::new(model);
    // A file: a single-file checkpoint (pickles are refused when it is opened, by name).
    if as_path.is_dir() || as_path.is_file() {
        return Ok(ModelLocation::Path(as_path.to_path_buf()));
    }
    let mut searched = vec![format!(
        "the presets ({})",
        PRESETS
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    )];
    searched.push(format!("a folder at {model}"));
    let escapes = as_path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(if as_path.is_absolute() {
            Error::ModelNotFound {
                name: model.into(),
                searched,
            }
        } else {
            refused("a model name may not leave the models folder (`..`, a root or a drive)")
        });
    }
    let folders = paths.folders();
    for (var, folder) in &folders {
        let candidate = folder.join(as_path);
        if candidate.is_dir() || candidate.is_file() {
            return Ok(ModelLocation::Path(candidate));
        }
        searched.push(format!("{} (${var})", candidate.display()));
    }
    for var in ["DIFFUSION_MODELS_PATH", "MODELS_PATH"] {
        if !folders.iter().any(|(v, _)| *v == var) {
            searched.push(format!("${var} (not set)"));
        }
    }
    Err(Error::ModelNotFound {
        name: model.into(),
        searched,
    })
}

/// A model [`crate::Model::load`] takes by name.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalModel {
    /// The name [`crate::Model::load`] takes.
    pub name: String,
    /// Where it is.
    pub location: ModelLocation,
    /// `preset`, `diffusers` (a folder with `model_index.json`), `web` (`manifest.json`) or
    /// `single-file` (a `.safetensors` checkpoint in the original layout).
    pub format: &'static str,
    /// Whether it loads without a download: folders and the built-in preset always; a hub
    /// preset when all its files are in the hub cache.
    pub downloaded: bool,
}

/// The presets (each marked downloaded or not, by looking in the hub cache of
/// [`HubConfig::from_env`], asking no server), then the model folders directly under
/// `paths`' folders (those with a `model_index.json` or a web `manifest.json`, and
/// `.safetensors` single-file checkpoints), sorted by
/// name within each folder; a name in both folders is listed once, from the first.
pub fn list_models(paths: &ModelPaths) -> Vec<LocalModel> {
    list_models_with(paths, &HubConfig::from_env())
}

/// [`list_models`] with the hub cache of `hub`.
pub fn list_models_with(paths: &ModelPaths, hub: &HubConfig) -> Vec<LocalModel> {
    let mut out: Vec<LocalModel> = PRESETS
        .iter()
        .map(|p| LocalModel {
            name: p.name.into(),
            location: ModelLocation::Preset(*p),
            format: "preset",
            downloaded: crate::hub::is_downloaded(p, hub),
        })
        .collect();
    for (_, folder) in paths.folders() {
        let Ok(entries) = std::fs::read_dir(folder) else {
            continue;
        };
        let mut found: Vec<LocalModel> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let format = if path.join("model_index.json").is_file() {
                    "diffusers"
                } else if path.join(sd_weights::web::MANIFEST_FILE).is_file() {
                    "web"
                } else if path.is_file()
                    && path
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
                {
                    "single-file"
                } else {
                    return None;
                };
                Some(LocalModel {
                    name: path.file_name()?.to_string_lossy().into_owned(),
                    location: ModelLocation::Path(path),
                    format,
                    downloaded: true,
                })
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        for model in found {
            if !out.iter().any(|m| m.name == model.name) {
                out.push(model);
            }
        }
    }
    out
}
