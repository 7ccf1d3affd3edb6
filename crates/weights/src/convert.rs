//! Conversion of checkpoints to f16 safetensors: for the model `cargo xtask run` embeds and for
//! the web converter.
//!
//! [`to_f16_safetensors`] turns the tensors of one or more files into one f16 file; the output
//! is deterministic (tensors sorted by name, fixed `__metadata__`), so converting twice gives the
//! same bytes. [`convert_folder_f16`] does that for every component of a diffusers pipeline
//! folder and copies the rest (configs, tokenizer, scheduler).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};

use crate::diffusers::{find_component_files, read_component_files};
use crate::error::{Result, WeightError};
use crate::file::SafetensorsFile;

/// A tensor to be written.
pub(crate) struct Out {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl View for &Out {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A converted file: its bytes and what the conversion noticed.
#[derive(Clone, Debug)]
pub struct F16File {
    /// The safetensors file.
    pub bytes: Vec<u8>,
    /// How many tensors it holds.
    pub tensors: usize,
    /// Tensors with finite values too large for f16 (beyond ±65504), now infinite.
    pub overflowed: Vec<String>,
    /// Tensors that are not floating point (e.g. an `I64` `position_ids`), copied unchanged.
    pub kept: Vec<String>,
}

/// The tensors of `files` (e.g. the shards of one component) with every F32/F16/BF16 tensor as
/// F16 (see [`crate::TensorData::to_f16`]), other element types unchanged, sorted by name.
/// The same name in two files is a [`WeightError::Duplicate`]. `label` names the output in
/// errors.
pub(crate) struct F16Tensors<'a> {
    pub tensors: Vec<(&'a str, Out)>,
    pub overflowed: Vec<String>,
    pub kept: Vec<String>,
}

pub(crate) fn f16_tensors<'a>(label: &str, files: &'a [SafetensorsFile]) -> Result<F16Tensors<'a>> {
    let mut tensors: Vec<(&str, Out)> = Vec::new();
    let mut overflowed = Vec::new();
    let mut kept = Vec::new();
    let mut origin: Vec<(&str, &str)> = Vec::new();
    for file in files {
        for t in file.tensors() {
            origin.push((t.name(), file.label()));
            let data = match t.dtype() {
                Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                    let halves = t.to_f16()?;
                    if t.dtype() != Dtype::F16
                        && halves.iter().any(|h| h.is_infinite())
                        && t.to_f32()?.iter().all(|x| !x.is_infinite())
                    {
                        overflowed.push(t.name().to_owned());
                    }
                    let data = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
                    (Dtype::F16, data)
                }
                other => {
                    kept.push(t.name().to_owned());
                    (other, t.bytes().to_vec())
                }
            };
            tensors.push((
                t.name(),
                Out {
                    dtype: data.0,
                    shape: t.shape().to_vec(),
                    data: data.1,
                },
            ));
        }
    }
    origin.sort_unstable();
    if let Some(pair) = origin.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(WeightError::Duplicate {
            component: label.to_owned(),
            name: pair[0].0.to_owned(),
            first: pair[0].1.to_owned(),
            second: pair[1].1.to_owned(),
        });
    }
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    overflowed.sort();
    kept.sort();
    Ok(F16Tensors {
        tensors,
        overflowed,
        kept,
    })
}

/// Serialises tensors as one safetensors file with a fixed `__metadata__`, so the same tensors
/// always give the same bytes.
pub(crate) fn serialize<'a>(
    label: &str,
    tensors: impl IntoIterator<Item = &'a (&'a str, Out)>,
) -> Result<Vec<u8>> {
    let metadata = [("format".to_owned(), "pt".to_owned())]
        .into_iter()
        .collect();
    safetensors::serialize(tensors.into_iter().map(|(n, t)| (*n, t)), Some(metadata)).map_err(|e| {
        WeightError::Serialize {
            file: label.to_owned(),
            reason: e.to_string(),
        }
    })
}

/// Writes the tensors of `files` (e.g. the shards of one component) into one safetensors file
/// as [`f16_tensors`] converts them.
pub fn to_f16_safetensors(label: &str, files: &[SafetensorsFile]) -> Result<F16File> {
    let converted = f16_tensors(label, files)?;
    let bytes = serialize(label, &converted.tensors)?;
    Ok(F16File {
        bytes,
        tensors: converted.tensors.len(),
        overflowed: converted.overflowed,
        kept: converted.kept,
    })
}

/// What [`convert_folder_f16`] did with one component.
#[derive(Clone, Debug)]
pub struct ComponentReport {
    /// The component (`unet`, ...).
    pub component: String,
    /// The weight files read.
    pub sources: Vec<PathBuf>,
    /// The shard index read, for a sharded source.
    pub index: Option<PathBuf>,
    /// The file written.
    pub output: PathBuf,
    /// How many tensors.
    pub tensors: usize,
    /// Set when the source files were not the variant asked for.
    pub note: Option<String>,
    /// Tensors whose values overflowed f16 (see [`F16File::overflowed`]).
    pub overflowed: Vec<String>,
    /// Non-float tensors copied unchanged.
    pub kept: Vec<String>,
}

/// What [`convert_folder_f16`] did.
#[derive(Clone, Debug, Default)]
pub struct FolderReport {
    /// The converted components, in folder-name order.
    pub components: Vec<ComponentReport>,
    /// Other files copied as they are (configs, tokenizer, scheduler), destination paths.
    pub copied: Vec<PathBuf>,
    /// Files left out: weights in other formats or variants (already converted from another
    /// file of the same component), and hidden entries.
    pub skipped: Vec<PathBuf>,
}

/// Whether a file name is a weight file (safetensors, pickle, ...) or a shard index of one.
pub(crate) fn is_weight_file(name: &str) -> bool {
    const EXTS: [&str; 10] = [
        ".safetensors",
        ".bin",
        ".ckpt",
        ".pt",
        ".pth",
        ".onnx",
        ".onnx_data",
        ".msgpack",
        ".h5",
        ".gguf",
    ];
    let name = name.strip_suffix(".index.json").unwrap_or(name);
    EXTS.iter().any(|e| name.ends_with(e))
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightError + '_ {
    move |source| WeightError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The entries of a folder, sorted by name.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Copies `src` into `dst` recursively, leaving out weight files and hidden entries.
fn copy_tree(src: &Path, dst: &Path, report: &mut FolderReport) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    for (name, path) in sorted_entries(src)? {
        if name.starts_with('.') || is_weight_file(&name) {
            report.skipped.push(path);
            continue;
        }
        let target = dst.join(&name);
        // `metadata` follows symlinks (Hugging Face cache folders link to blobs).
        if std::fs::metadata(&path).map_err(io(&path))?.is_dir() {
            copy_tree(&path, &target, report)?;
        } else {
            std::fs::copy(&path, &target).map_err(io(&path))?;
            report.copied.push(target);
        }
    }
    Ok(())
}

/// Copies the diffusers pipeline folder `src` to `dst` with every component's weights as one
/// f16 `<base>.safetensors` (shards merged, `variant` preferred as the source, e.g. `None` to
/// round from the full-precision files), and every other file (`model_index.json`, configs,
/// tokenizer, scheduler) copied. A component folder whose only weights are in another format
/// (`.bin`) is an error, since the result would lack it. `dst` may exist; files in it are
/// overwritten. Returns what was done.
pub fn convert_folder_f16(src: &Path, dst: &Path, variant: Option<&str>) -> Result<FolderReport> {
    let src_abs = src.canonicalize().map_err(io(src))?;
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    let dst_abs = dst.canonicalize().map_err(io(dst))?;
    if dst_abs.starts_with(&src_abs) || src_abs.starts_with(&dst_abs) {
        return Err(WeightError::Destination {
            path: dst.to_owned(),
            reason: format!(
                "the destination and the source ({}) must not contain each other",
                src.display()
            ),
        });
    }
    let mut report = FolderReport::default();
    for (name, path) in sorted_entries(src)? {
        if name.starts_with('.') {
            report.skipped.push(path);
            continue;
        }
        let target = dst.join(&name);
        if !std::fs::metadata(&path).map_err(io(&path))?.is_dir() {
            std::fs::copy(&path, &target).map_err(io(&path))?;
            report.copied.push(target);
            continue;
        }
        let has_weights = sorted_entries(&path)?
            .iter()
            .any(|(n, _)| is_weight_file(n));
        if has_weights {
            let found = find_component_files(src, &name, variant)?;
            let files = read_component_files(&found)?;
            let output = target.join(format!("{}.safetensors", found.base));
            let converted = to_f16_safetensors(&output.display().to_string(), &files)?;
            std::fs::create_dir_all(&target).map_err(io(&target))?;
            std::fs::write(&output, &converted.bytes).map_err(io(&output))?;
            report.components.push(ComponentReport {
                component: name,
                sources: found.files,
                index: found.index,
                output,
                tensors: converted.tensors,
                note: found.note,
                overflowed: converted.overflowed,
                kept: converted.kept,
            });
        }
        copy_tree(&path, &target, &mut report)?;
    }
    // Weight files that were read are not "skipped".
    let read: Vec<PathBuf> = report
        .components
        .iter()
        .flat_map(|c| c.sources.iter().chain(&c.index).cloned())
        .collect();
    report.skipped.retain(|p| !read.contains(p));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_file_names() {
        for n in [
            "model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
            "v1-5.ckpt",
        ] {
            assert!(is_weight_file(n), "{n}");
        }
        for n in ["config.json", "tokenizer.json", "merges.txt", "vocab.json"] {
            assert!(!is_weight_file(n), "{n}");
        }
    }
}
