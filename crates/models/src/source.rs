//! Where a model's files come from: a diffusers folder on disk, or files held in memory (the
//! default model embedded in the CLI, a web model's verified shards).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sd_weights::single_file::{self, SingleFileOptions};
use sd_weights::{Renamer, SafetensorsFile, WeightSource, open_component};

use crate::{ModelError, Result};

/// The files of one diffusers pipeline folder.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A folder laid out as diffusers saves it (`unet/config.json`, ...).
    Folder {
        path: PathBuf,
        /// Preferred weight variant (`fp16`), falling back to the plain files.
        variant: Option<String>,
    },
    /// Files by their path inside such a folder (`unet/diffusion_pytorch_model.safetensors`).
    Memory(BTreeMap<String, Arc<[u8]>>),
}

impl ModelSource {
    /// A folder on disk.
    pub fn folder(path: impl Into<PathBuf>) -> Self {
        Self::Folder {
            path: path.into(),
            variant: None,
        }
    }

    /// A model on disk: a single-file `.safetensors` checkpoint in the original Stability/A1111
    /// layout (read now, with the built-in configs of its architecture), a web model folder
    /// (`manifest.json` + shards, read and verified now) or a diffusers folder (read as
    /// components are loaded; a part its `model_index.json` lists but the folder lacks is an
    /// error naming it). Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) are refused.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(path, &SingleFileOptions::default())
    }

    /// [`ModelSource::open`] with options for single-file checkpoints (a folder of configs
    /// replacing the built-in ones, the prediction type); folders ignore them.
    pub fn open_with(path: impl Into<PathBuf>, options: &SingleFileOptions) -> Result<Self> {
        let path = path.into();
        if path.is_file() || single_file::is_pickle(&path) {
            let model = single_file::open_single_file(&path, options)?;
            return Ok(Self::Memory(model.files));
        }
        if path.join(sd_weights::web::MANIFEST_FILE).is_file() {
            return Ok(Self::Memory(sd_weights::web::read_web_model(&path)?));
        }
        check_parts(&path)?;
        Ok(Self::folder(path))
    }

    /// Where the model is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Folder { path, .. } => path.display().to_string(),
            Self::Memory(_) => "the embedded model".into(),
        }
    }

    /// A file's bytes, by its path inside the folder.
    pub fn read(&self, file: &str) -> Result<Vec<u8>> {
        match self {
            Self::Folder { path, .. } => {
                let full = path.join(file);
                std::fs::read(&full).map_err(|e| ModelError::File {
                    path: full.display().to_string(),
                    reason: e.to_string(),
                })
            }
            Self::Memory(files) => {
                files
                    .get(file)
                    .map(|b| b.to_vec())
                    .ok_or_else(|| ModelError::File {
                        path: file.to_string(),
                        reason: "not in the model".into(),
                    })
            }
        }
    }

    /// A file as text.
    pub fn read_text(&self, file: &str) -> Result<String> {
        String::from_utf8(self.read(file)?).map_err(|_| ModelError::File {
            path: file.to_string(),
            reason: "not UTF-8 text".into(),
        })
    }

    /// Whether a file exists.
    pub fn has(&self, file: &str) -> bool {
        match self {
            Self::Folder { path, .. } => Path::new(path).join(file).is_file(),
            Self::Memory(files) => files.contains_key(file),
        }
    }

    /// The weights of a component (`unet`, `vae`, `text_encoder`).
    pub fn weights(&self, component: &str) -> Result<WeightSource> {
        match self {
            Self::Folder { path, variant } => {
                Ok(open_component(path, component, variant.as_deref())?.source)
            }
            Self::Memory(files) => {
                let prefix = format!("{component}/");
                let found: Vec<SafetensorsFile> = files
                    .iter()
                    .filter(|(name, _)| name.starts_with(&prefix) && name.ends_with(".safetensors"))
                    .map(|(name, bytes)| SafetensorsFile::from_arc(name.clone(), Arc::clone(bytes)))
                    .collect::<std::result::Result<_, _>>()?;
                if found.is_empty() {
                    return Err(ModelError::File {
                        path: prefix,
                        reason: "no .safetensors weights".into(),
                    });
                }
                Ok(WeightSource::new(
                    component,
                    found,
                    &Renamer::for_component(component),
                )?)
            }
        }
    }
}

/// Checks that every part a diffusers folder's `model_index.json` lists (`unet`, `vae`,
/// `text_encoder`, `scheduler`, ... with a class, not `[null, null]`) has its folder, so a
/// partial download is reported by the part's name before anything is loaded. A folder without
/// `model_index.json` is left to the loader, whose errors name each file.
fn check_parts(folder: &Path) -> Result<()> {
    let index = folder.join("model_index.json");
    let Ok(text) = std::fs::read_to_string(&index) else {
        return Ok(());
    };
    let Ok(serde_json::Value::Object(parts)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return Err(ModelError::File {
            path: index.display().to_string(),
            reason: "not a JSON object".into(),
        });
    };
    for (name, value) in &parts {
        let class = match value.as_array().map(Vec::as_slice) {
            Some([library, class]) if !library.is_null() && !class.is_null() => class,
            _ => continue,
        };
        // Only the parts the pipeline loads; others (safety checker, feature extractor) may be
        // left out of a download.
        let needed = ["unet", "vae", "scheduler"].contains(&name.as_str())
            || name.starts_with("text_encoder")
            || name.starts_with("tokenizer");
        if needed && !folder.join(name).is_dir() {
            return Err(ModelError::File {
                path: folder.join(name).display().to_string(),
                reason: format!(
                    "the model folder lacks its `{name}` part ({} in model_index.json): an \
                     incomplete download or copy?",
                    class.as_str().unwrap_or("listed")
                ),
            });
        }
    }
    Ok(())
}
