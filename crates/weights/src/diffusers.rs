//! The diffusers pipeline folder layout: which file holds a component's weights.
//!
//! A component folder (`unet/`, `vae/`, `text_encoder/`, ...) holds `<base>.safetensors`, where
//! `<base>` is `diffusion_pytorch_model` (diffusers models) or `model` (transformers models),
//! or a variant `<base>.<variant>.safetensors` (`fp16`), or a sharded checkpoint:
//! `<base>[.<variant>].safetensors.index.json`, whose `weight_map` names the shard of every
//! tensor. This mirrors `diffusers.utils.hub_utils._get_model_file` with `variant`: the asked
//! variant first, then the plain file, then any other variant, with a note whenever the file
//! used is not the one asked for.
//!
//! [`ShardIndex::from_json`] works on bytes, for the browser; the rest reads folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Result, WeightError};
use crate::file::SafetensorsFile;
use crate::source::{Renamer, WeightSource};

/// The file-name stems of a component's weights: diffusers models first, then transformers.
pub const WEIGHT_BASES: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// A sharded checkpoint's `*.safetensors.index.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIndex {
    /// Tensor name -> shard file name (relative to the index's folder).
    pub weight_map: BTreeMap<String, String>,
    /// `metadata.total_size`, the tensor bytes over all shards, when given.
    pub total_size: Option<u64>,
}

#[derive(serde::Deserialize)]
struct IndexJson {
    #[serde(default)]
    metadata: Option<IndexMetadata>,
    weight_map: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct IndexMetadata {
    #[serde(default)]
    total_size: Option<f64>,
}

impl ShardIndex {
    /// Parses an index file's bytes; `label` names it in errors.
    pub fn from_json(label: &str, bytes: &[u8]) -> Result<Self> {
        let json: IndexJson = serde_json::from_slice(bytes).map_err(|e| WeightError::Index {
            file: label.to_owned(),
            reason: e.to_string(),
        })?;
        if let Some(bad) = json
            .weight_map
            .values()
            .find(|f| f.is_empty() || f.contains(['/', '\\']) || f.starts_with('.'))
        {
            return Err(WeightError::Index {
                file: label.to_owned(),
                reason: format!("shard `{bad}` is not a plain file name in the same folder"),
            });
        }
        Ok(Self {
            weight_map: json.weight_map,
            // A count of bytes: integral and far below 2^53, so the cast is exact.
            total_size: json
                .metadata
                .and_then(|m| m.total_size)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| s as u64),
        })
    }

    /// The shard file names, sorted, each once.
    pub fn shard_files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        files.sort_unstable();
        files.dedup();
        files
    }

    /// Checks that every tensor of the weight map is in the shard it names; `shards` are the
    /// parsed shard files, labelled so that their labels end with the shard names.
    pub fn check(&self, label: &str, shards: &[(String, SafetensorsFile)]) -> Result<()> {
        for (tensor, shard) in &self.weight_map {
            let file = shards
                .iter()
                .find(|(name, _)| name == shard)
                .map(|(_, f)| f)
                .ok_or_else(|| WeightError::Index {
                    file: label.to_owned(),
                    reason: format!("shard `{shard}` (of `{tensor}`) was not loaded"),
                })?;
            if file.tensor(tensor).is_none() {
                return Err(WeightError::Index {
                    file: label.to_owned(),
                    reason: format!("`{tensor}` is mapped to `{shard}`, which does not hold it"),
                });
            }
        }
        Ok(())
    }
}

/// Where a component's weights are, as found by [`find_component_files`].
#[derive(Clone, Debug)]
pub struct ComponentFiles {
    /// The component's folder.
    pub dir: PathBuf,
    /// The file-name stem found (`diffusion_pytorch_model` or `model`).
    pub base: String,
    /// The variant of the files used (`None`: the plain files).
    pub variant: Option<String>,
    /// The weight files (one, or the shards in name order).
    pub files: Vec<PathBuf>,
    /// The index file, for a sharded checkpoint.
    pub index: Option<PathBuf>,
    /// Set when the files used are not the ones asked for (another variant): for the user.
    pub note: Option<String>,
}

/// One candidate: (variant, file name, is an index).
type Candidate = (Option<String>, String, bool);

fn candidates(base: &str, variant: Option<&str>) -> [Candidate; 2] {
    let stem = match variant {
        Some(v) => format!("{base}.{v}"),
        None => base.to_owned(),
    };
    let v = variant.map(str::to_owned);
    [
        (v.clone(), format!("{stem}.safetensors"), false),
        (v, format!("{stem}.safetensors.index.json"), true),
    ]
}

/// The sorted file names of a folder (empty if it cannot be read).
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The variants present in a folder's file names (`<base>.<variant>.safetensors` or its
/// index), `fp16` first, then by name. Shards (`...-00001-of-00002...`) are not variants.
fn variants_present(names: &[String], base: &str) -> Vec<String> {
    let mut found: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(base)?.strip_prefix('.')?;
            let v = rest
                .strip_suffix(".safetensors.index.json")
                .or_else(|| rest.strip_suffix(".safetensors"))?;
            (!v.is_empty() && !v.contains(['.', '-'])).then(|| v.to_owned())
        })
        .collect();
    found.sort_by(|a, b| (a != "fp16").cmp(&(b != "fp16")).then(a.cmp(b)));
    found.dedup();
    found
}

/// Finds the weight files of `component` under the pipeline folder `folder`, preferring
/// `variant` (e.g. `Some("fp16")`), then the plain files, then any other variant.
pub fn find_component_files(
    folder: &Path,
    component: &str,
    variant: Option<&str>,
) -> Result<ComponentFiles> {
    let dir = folder.join(component);
    let names = list_dir(&dir);
    let mut looked_for = Vec::new();
    for base in WEIGHT_BASES {
        let mut order: Vec<Candidate> = Vec::new();
        if let Some(v) = variant {
            order.extend(candidates(base, Some(v)));
        }
        order.extend(candidates(base, None));
        for other in variants_present(&names, base) {
            if Some(other.as_str()) != variant {
                order.extend(candidates(base, Some(&other)));
            }
        }
        for (found_variant, name, is_index) in order {
            if !names.contains(&name) {
                if !looked_for.contains(&name) {
                    looked_for.push(name);
                }
                continue;
            }
            let path = dir.join(&name);
            let note = (found_variant.as_deref() != variant).then(|| {
                let asked = variant.map_or("the plain (non-variant) weights".to_owned(), |v| {
                    format!("variant `{v}`")
                });
                format!("{}: no {asked}; using {name}", dir.display())
            });
            let (files, index) = if is_index {
                let bytes = std::fs::read(&path).map_err(|source| WeightError::Io {
                    path: path.clone(),
                    source,
                })?;
                let index = ShardIndex::from_json(&path.display().to_string(), &bytes)?;
                let shards = index.shard_files().iter().map(|s| dir.join(s)).collect();
                (shards, Some(path))
            } else {
                (vec![path], None)
            };
            return Ok(ComponentFiles {
                dir,
                base: base.to_owned(),
                variant: found_variant,
                files,
                index,
                note,
            });
        }
    }
    Err(WeightError::MissingFile {
        dir,
        component: component.to_owned(),
        looked_for,
        present: names,
    })
}

/// A component's weights, opened.
#[derive(Debug)]
pub struct Component {
    /// The tensors, under normalised names.
    pub source: WeightSource,
    /// Where they came from (and the note, if another variant was used).
    pub files: ComponentFiles,
}

/// Reads the files [`find_component_files`] found, checking a shard index against its shards.
pub fn read_component_files(found: &ComponentFiles) -> Result<Vec<SafetensorsFile>> {
    let mut shards = Vec::with_capacity(found.files.len());
    for path in &found.files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        shards.push((name, SafetensorsFile::read(path)?));
    }
    if let Some(index_path) = &found.index {
        let bytes = std::fs::read(index_path).map_err(|source| WeightError::Io {
            path: index_path.clone(),
            source,
        })?;
        let label = index_path.display().to_string();
        ShardIndex::from_json(&label, &bytes)?.check(&label, &shards)?;
    }
    Ok(shards.into_iter().map(|(_, f)| f).collect())
}

/// Opens component `component` (`unet`, `vae`, `text_encoder`, ...) of the diffusers pipeline
/// folder `folder`, with the renamer [`Renamer::for_component`] picks (so a text encoder's
/// names are the same with or without `text_model.`).
pub fn open_component(folder: &Path, component: &str, variant: Option<&str>) -> Result<Component> {
    open_component_with(
        folder,
        component,
        variant,
        &Renamer::for_component(component),
    )
}

/// [`open_component`] with a given renamer.
pub fn open_component_with(
    folder: &Path,
    component: &str,
    variant: Option<&str>,
    renamer: &Renamer,
) -> Result<Component> {
    let files = find_component_files(folder, component, variant)?;
    let source = WeightSource::new(component, read_component_files(&files)?, renamer)?;
    Ok(Component { source, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_found_and_shards_are_not_variants() {
        let names: Vec<String> = [
            "config.json",
            "diffusion_pytorch_model.bf16.safetensors",
            "diffusion_pytorch_model.fp16.safetensors.index.json",
            "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "model.safetensors",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            variants_present(&names, "diffusion_pytorch_model"),
            ["fp16", "bf16"]
        );
        assert!(variants_present(&names, "model").is_empty());
    }

    #[test]
    fn index_parsing() -> Result<()> {
        let json = br#"{"metadata": {"total_size": 1234}, "weight_map": {
            "a.weight": "m-00001-of-00002.safetensors",
            "b.weight": "m-00002-of-00002.safetensors",
            "c.weight": "m-00001-of-00002.safetensors"}}"#;
        let index = ShardIndex::from_json("i.json", json)?;
        assert_eq!(index.total_size, Some(1234));
        assert_eq!(
            index.shard_files(),
            [
                "m-00001-of-00002.safetensors",
                "m-00002-of-00002.safetensors"
            ]
        );
        let escape = br#"{"weight_map": {"a": "../x.safetensors"}}"#;
        assert!(ShardIndex::from_json("i.json", escape).is_err());
        let err = ShardIndex::from_json("i.json", b"{}").expect_err("no weight_map");
        assert!(err.to_string().contains("i.json"), "{err}");
        Ok(())
    }
}
