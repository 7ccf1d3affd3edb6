//! Where a model comes from: a preset name, a path, or a name under the models folders
//! (`$DIFFUSION_MODELS_PATH`, then `$MODELS_PATH`), as other Rust diffusion back ends resolve
//! them.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use sd_models::ModelSource;

use crate::error::{Error, Result};

/// A model known by name, needing no path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The name to load it by.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
}

/// The presets. Hub-hosted presets (SD 1.5, SD-Turbo, SDXL, ...) arrive with hub downloads.
pub const PRESETS: &[Preset] = &[Preset {
    name: "digits",
    description: "the built-in tiny Stable Diffusion of coloured digits (64x64), no download",
}];

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A preset.
    Preset(Preset),
    /// A model folder (diffusers layout, or a web model with `manifest.json`).
    Path(PathBuf),
}

impl fmt::Display for ModelLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Preset(preset) => write!(f, "preset `{}`", preset.name),
            Self::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl ModelLocation {
    /// The model's files and its name.
    pub(crate) fn open(&self) -> Result<(ModelSource, String)> {
        match self {
            Self::Preset(_) => Ok((crate::embedded::source(), crate::embedded::NAME.into())),
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
    if as_path.is_dir() {
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
        if candidate.is_dir() {
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

/// A model available without a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    /// The name [`crate::Model::load`] takes.
    pub name: String,
    /// Where it is.
    pub location: ModelLocation,
    /// `preset`, `diffusers` (a folder with `model_index.json`) or `web` (`manifest.json`).
    pub format: &'static str,
}

/// The presets, then the model folders directly under `paths`' folders (those with a
/// `model_index.json` or a web `manifest.json`), sorted by name within each folder; a name in
/// both folders is listed once, from the first.
pub fn list_models(paths: &ModelPaths) -> Vec<LocalModel> {
    let mut out: Vec<LocalModel> = PRESETS
        .iter()
        .map(|p| LocalModel {
            name: p.name.into(),
            location: ModelLocation::Preset(*p),
            format: "preset",
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
                } else {
                    return None;
                };
                Some(LocalModel {
                    name: path.file_name()?.to_string_lossy().into_owned(),
                    location: ModelLocation::Path(path),
                    format,
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
