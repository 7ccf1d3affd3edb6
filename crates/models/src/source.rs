//! Where a model's files come from: a diffusers folder on disk, or files held in memory (the
//! default model embedded in the CLI, a web model's verified shards).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    /// A model folder on disk: a web model (`manifest.json` + shards, read and verified now)
    /// or a diffusers folder (read as components are loaded).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if path.join(sd_weights::web::MANIFEST_FILE).is_file() {
            Ok(Self::Memory(sd_weights::web::read_web_model(&path)?))
        } else {
            Ok(Self::folder(path))
        }
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
