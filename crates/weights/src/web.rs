//! The web model format: one `manifest.json` plus fp16 shards named by their SHA-256, which the
//! browser fetches, verifies and caches one by one, and which the native side loads from a
//! folder, so one format serves both.
//!
//! Each shard is itself a safetensors file holding some tensors of one component (a few tens of
//! MiB, well under IndexedDB's ~127 MiB value cap and the 128 MiB binding limit). The manifest
//! lists every shard (component, size, SHA-256), every tensor (component, dtype, shape, shard,
//! byte offset and length inside the shard file) and carries the model's text files (configs,
//! scheduler, tokenizer) verbatim under their diffusers paths. [`convert_to_web`] is
//! deterministic: the same input gives the same bytes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::convert::{Out, f16_tensors, io, is_weight_file, serialize, sorted_entries};
use crate::diffusers::{find_component_files, read_component_files};
use crate::error::{Result, WeightError};
use crate::file::SafetensorsFile;

/// The manifest's `format` field.
pub const FORMAT: &str = "sd-wgsl-web-model";
/// The manifest version this code writes and reads.
pub const VERSION: u32 = 1;
/// The shard size the converter aims for; a tensor larger than this gets a shard of its own.
pub const SHARD_TARGET_BYTES: usize = 32 << 20;
/// The most shards a manifest may list (SDXL in fp16 is about 220 of 32 MiB).
pub const MAX_SHARDS: usize = 4096;
/// The largest shard a manifest may declare: a shard is held whole in memory while it
/// downloads, so a manifest cannot make a browser tab allocate more than this at once (the
/// largest single tensor of SDXL in fp16 is about 130 MB).
pub const MAX_SHARD_BYTES: u64 = 512 << 20;
/// The largest model a manifest may declare in all (SDXL in fp16 is about 7 GB).
pub const MAX_TOTAL_BYTES: u64 = 16 << 30;
/// The manifest's file name inside a web model folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The model's name, for progress and cache listings.
    pub name: String,
    /// Text files by their path in a diffusers folder (`unet/config.json`, ...).
    pub files: BTreeMap<String, String>,
    /// The shards, in the order tensors refer to them.
    pub shards: Vec<ShardEntry>,
    /// Every tensor, by component then name.
    pub tensors: Vec<TensorEntry>,
}

/// One shard file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// `<sha256>.safetensors`, relative to the manifest.
    pub file: String,
    /// The component its tensors belong to.
    pub component: String,
    /// Its size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of its bytes.
    pub sha256: String,
}

/// Where one tensor lies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    /// Its name in the component (as diffusers saves it).
    pub name: String,
    /// Its component.
    pub component: String,
    /// safetensors' dtype name (`F16`, `I64`).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Index into [`WebManifest::shards`].
    pub shard: usize,
    /// Byte offset of its data in the shard file.
    pub offset: u64,
    /// Byte length of its data.
    pub length: u64,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl WebManifest {
    /// Parses and checks a manifest: format and version, shard names and hashes, tensor
    /// references in range. `label` names it in errors.
    pub fn from_json(label: &str, json: &[u8]) -> Result<Self> {
        let bad = |reason: String| WeightError::Manifest {
            file: label.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => return Err(bad(format!("format is `{other}`, expected `{FORMAT}`"))),
            None => return Err(bad(format!("no `format` field (expected `{FORMAT}`)"))),
        }
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(bad(format!(
                    "version {v}; this build reads version {VERSION}: convert the model again"
                )));
            }
            None => return Err(bad("no numeric `version` field".into())),
        }
        let manifest: Self = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        manifest.check().map_err(bad)?;
        Ok(manifest)
    }

    fn check(&self) -> std::result::Result<(), String> {
        // Sizes first: a caller allocates by them (the browser, a buffer per shard).
        if self.shards.len() > MAX_SHARDS {
            return Err(format!(
                "{} shards; the most allowed is {MAX_SHARDS}",
                self.shards.len()
            ));
        }
        let mut total = 0u64;
        for (i, shard) in self.shards.iter().enumerate() {
            if shard.size > MAX_SHARD_BYTES {
                return Err(format!(
                    "shard {i} declares {} bytes; the largest allowed is {MAX_SHARD_BYTES} (512 MiB)",
                    shard.size
                ));
            }
            total = total.saturating_add(shard.size);
        }
        if total > MAX_TOTAL_BYTES {
            return Err(format!(
                "the shards declare {total} bytes in all; the most allowed is {MAX_TOTAL_BYTES} (16 GiB)"
            ));
        }
        for (i, shard) in self.shards.iter().enumerate() {
            let hex = shard.sha256.len() == 64
                && shard
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(format!(
                    "shard {i}: sha256 `{}` is not 64 hex digits",
                    shard.sha256
                ));
            }
            if shard.file != format!("{}.safetensors", shard.sha256) {
                return Err(format!(
                    "shard {i}: file `{}` is not `<sha256>.safetensors`",
                    shard.file
                ));
            }
        }
        for t in &self.tensors {
            let shard = self
                .shards
                .get(t.shard)
                .ok_or_else(|| format!("tensor `{}`: shard {} does not exist", t.name, t.shard))?;
            if shard.component != t.component {
                return Err(format!(
                    "tensor `{}` of `{}` is in a shard of `{}`",
                    t.name, t.component, shard.component
                ));
            }
            if t.offset
                .checked_add(t.length)
                .is_none_or(|end| end > shard.size)
            {
                return Err(format!("tensor `{}`: bytes beyond its shard", t.name));
            }
        }
        for needed in ["unet/config.json", "vae/config.json"] {
            if !self.files.contains_key(needed) {
                return Err(format!("no `{needed}` in `files`"));
            }
        }
        Ok(())
    }

    /// The manifest as written to disk (pretty JSON, stable field order).
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and maps cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The sum of the shard sizes.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.size).sum()
    }

    /// Checks a shard's bytes against the manifest (size, then SHA-256).
    pub fn verify_shard(&self, index: usize, bytes: &[u8]) -> Result<()> {
        let Some(shard) = self.shards.get(index) else {
            return Err(WeightError::Manifest {
                file: MANIFEST_FILE.into(),
                reason: format!("no shard {index}"),
            });
        };
        let integrity = |what, expected: String, got: String| WeightError::Integrity {
            file: shard.file.clone(),
            what,
            expected,
            got,
        };
        if bytes.len() as u64 != shard.size {
            return Err(integrity(
                "size",
                shard.size.to_string(),
                bytes.len().to_string(),
            ));
        }
        let got = sha256_hex(bytes);
        if got != shard.sha256 {
            return Err(integrity("SHA-256", shard.sha256.clone(), got));
        }
        Ok(())
    }

    /// The model as files by their path in a diffusers folder: the text files, and each shard
    /// as `<component>/<sha256>.safetensors` (what `ModelSource::Memory` reads). `shards` maps
    /// shard file names to their (already verified) bytes; a missing one is an error.
    pub fn into_files(
        self,
        shards: &BTreeMap<String, Arc<[u8]>>,
    ) -> Result<BTreeMap<String, Arc<[u8]>>> {
        let mut files: BTreeMap<String, Arc<[u8]>> = self
            .files
            .into_iter()
            .map(|(path, text)| (path, Arc::from(text.into_bytes())))
            .collect();
        for shard in &self.shards {
            let bytes = shards
                .get(&shard.file)
                .ok_or_else(|| WeightError::Manifest {
                    file: MANIFEST_FILE.into(),
                    reason: format!(
                        "shard `{}` ({}) was not provided",
                        shard.file, shard.component
                    ),
                })?;
            files.insert(
                format!("{}/{}", shard.component, shard.file),
                Arc::clone(bytes),
            );
        }
        Ok(files)
    }
}

/// Reads a web model folder (`manifest.json` + shards), verifying every shard, into files by
/// their diffusers path (see [`WebManifest::into_files`]).
pub fn read_web_model(dir: &Path) -> Result<BTreeMap<String, Arc<[u8]>>> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let json = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest = WebManifest::from_json(&manifest_path.display().to_string(), &json)?;
    let mut shards = BTreeMap::new();
    for (i, shard) in manifest.shards.iter().enumerate() {
        let path = dir.join(&shard.file);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        manifest.verify_shard(i, &bytes)?;
        shards.insert(shard.file.clone(), Arc::from(bytes));
    }
    manifest.into_files(&shards)
}

/// What [`convert_to_web`] wrote.
#[derive(Clone, Debug)]
pub struct WebReport {
    /// The manifest.
    pub manifest: WebManifest,
    /// Tensors whose values overflowed f16 (`component/name`).
    pub overflowed: Vec<String>,
    /// Files of the source folder left out (weights in other formats, non-UTF-8 files).
    pub skipped: Vec<String>,
}

/// Converts the diffusers pipeline folder `src` into a web model in `dst`: fp16 shards of up
/// to [`SHARD_TARGET_BYTES`] named by their SHA-256, and `manifest.json` with the configs and
/// tokenizer. `name` defaults to the source folder's name. Deterministic.
pub fn convert_to_web(src: &Path, dst: &Path, name: Option<&str>) -> Result<WebReport> {
    let src_abs = src.canonicalize().map_err(io(src))?;
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    let name = name.map(str::to_owned).unwrap_or_else(|| {
        src_abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let mut manifest = WebManifest {
        format: FORMAT.into(),
        version: VERSION,
        name,
        files: BTreeMap::new(),
        shards: Vec::new(),
        tensors: Vec::new(),
    };
    let mut report_skipped = Vec::new();
    let mut overflowed = Vec::new();
    collect_text_files(&src_abs, "", &mut manifest.files, &mut report_skipped)?;
    add_fast_tokenizers(&mut manifest.files)?;
    for (component, path) in sorted_entries(&src_abs)? {
        let is_component = std::fs::metadata(&path).map_err(io(&path))?.is_dir()
            && sorted_entries(&path)?
                .iter()
                .any(|(n, _)| is_weight_file(n));
        if !is_component || component.starts_with('.') {
            continue;
        }
        let found = find_component_files(&src_abs, &component, None)?;
        let files = read_component_files(&found)?;
        let converted = f16_tensors(&component, &files)?;
        overflowed.extend(
            converted
                .overflowed
                .iter()
                .map(|t| format!("{component}/{t}")),
        );
        for group in shard_groups(&converted.tensors) {
            write_shard(dst, &component, group, &mut manifest)?;
        }
    }
    if manifest.shards.is_empty() {
        return Err(WeightError::Manifest {
            file: src.display().to_string(),
            reason: "no component folder with safetensors weights".into(),
        });
    }
    manifest.check().map_err(|reason| WeightError::Manifest {
        file: MANIFEST_FILE.into(),
        reason,
    })?;
    let manifest_path = dst.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest.to_json()).map_err(io(&manifest_path))?;
    Ok(WebReport {
        manifest,
        overflowed,
        skipped: report_skipped,
    })
}

/// Splits sorted tensors into consecutive groups of at most [`SHARD_TARGET_BYTES`] of data.
fn shard_groups<'a, 'b>(tensors: &'b [(&'a str, Out)]) -> Vec<&'b [(&'a str, Out)]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, t)) in tensors.iter().enumerate() {
        if i > start && bytes + t.data.len() > SHARD_TARGET_BYTES {
            groups.push(&tensors[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += t.data.len();
    }
    if start < tensors.len() {
        groups.push(&tensors[start..]);
    }
    groups
}

/// Serialises one shard, writes it under its hash and records it and its tensors.
fn write_shard(
    dst: &Path,
    component: &str,
    group: &[(&str, Out)],
    manifest: &mut WebManifest,
) -> Result<()> {
    let bytes = serialize(component, group)?;
    let sha256 = sha256_hex(&bytes);
    let file = format!("{sha256}.safetensors");
    let parsed = SafetensorsFile::from_vec(file.clone(), bytes)?;
    let shard = manifest.shards.len();
    for (name, out) in group {
        let range = parsed
            .byte_range(name)
            .ok_or_else(|| WeightError::Serialize {
                file: file.clone(),
                reason: format!("tensor `{name}` missing after serialisation"),
            })?;
        manifest.tensors.push(TensorEntry {
            name: (*name).to_owned(),
            component: component.to_owned(),
            dtype: out.dtype.to_string(),
            shape: out.shape.clone(),
            shard,
            offset: range.start as u64,
            length: range.len() as u64,
        });
    }
    let path = dst.join(&file);
    std::fs::write(&path, parsed.bytes()).map_err(io(&path))?;
    manifest.shards.push(ShardEntry {
        file,
        component: component.to_owned(),
        size: parsed.bytes().len() as u64,
        sha256,
    });
    Ok(())
}

/// Every non-weight, non-hidden UTF-8 file under `dir`, by its `/`-separated relative path.
/// Gives every tokenizer folder that has only the slow tokenizer's `vocab.json` + `merges.txt`
/// the `tokenizer.json` the loader reads (CLIP's, after checking they are CLIP's).
fn add_fast_tokenizers(files: &mut BTreeMap<String, String>) -> Result<()> {
    let slow: Vec<String> = files
        .keys()
        .filter_map(|name| name.strip_suffix("/vocab.json"))
        .filter(|folder| {
            files.contains_key(&format!("{folder}/merges.txt"))
                && !files.contains_key(&format!("{folder}/tokenizer.json"))
        })
        .map(str::to_owned)
        .collect();
    for folder in slow {
        let json = crate::tokenizer::clip_tokenizer_json_for(
            files[&format!("{folder}/vocab.json")].as_bytes(),
            files[&format!("{folder}/merges.txt")].as_bytes(),
        )
        .map_err(|e| WeightError::Manifest {
            file: format!("{folder}/vocab.json"),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8(json.to_vec()).map_err(|_| WeightError::Manifest {
            file: format!("{folder}/tokenizer.json"),
            reason: "the built-in tokenizer.json is not UTF-8".into(),
        })?;
        files.insert(format!("{folder}/tokenizer.json"), text);
    }
    Ok(())
}

fn collect_text_files(
    dir: &Path,
    prefix: &str,
    files: &mut BTreeMap<String, String>,
    skipped: &mut Vec<String>,
) -> Result<()> {
    for (name, path) in sorted_entries(dir)? {
        let rel = format!("{prefix}{name}");
        if name.starts_with('.') {
            continue;
        }
        if std::fs::metadata(&path).map_err(io(&path))?.is_dir() {
            collect_text_files(&path, &format!("{rel}/"), files, skipped)?;
        } else if is_weight_file(&name) {
            continue;
        } else {
            match String::from_utf8(std::fs::read(&path).map_err(io(&path))?) {
                Ok(text) => {
                    files.insert(rel, text);
                }
                Err(_) => skipped.push(rel),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(len: usize) -> Out {
        Out {
            dtype: safetensors::Dtype::F16,
            shape: vec![len / 2],
            data: vec![0; len],
        }
    }

    #[test]
    fn groups_respect_the_target_and_keep_big_tensors_whole() {
        let t = SHARD_TARGET_BYTES;
        let tensors = vec![
            ("a", out(t / 2)),
            ("b", out(t / 2)),
            ("c", out(2)),
            ("d", out(t * 2)),
            ("e", out(2)),
        ];
        let sizes: Vec<Vec<&str>> = shard_groups(&tensors)
            .iter()
            .map(|g| g.iter().map(|(n, _)| *n).collect())
            .collect();
        assert_eq!(sizes, [vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
    }

    #[test]
    fn manifests_that_are_not_ours_are_refused_with_the_reason() {
        for (json, expect) in [
            (r#"{"version":1}"#, "no `format` field"),
            (r#"{"format":"x","version":1}"#, "format is `x`"),
            (r#"{"format":"sd-wgsl-web-model","version":9}"#, "version 9"),
            (
                r#"{"format":"sd-wgsl-web-model","version":1}"#,
                "missing field",
            ),
            ("{", "not JSON"),
        ] {
            let err = WebManifest::from_json("m.json", json.as_bytes())
                .expect_err(json)
                .to_string();
            assert!(err.contains(expect), "{json}: {err}");
        }
    }

    fn manifest_with(shards: &[u64]) -> String {
        let hash = "0".repeat(64);
        let shards: Vec<String> = shards
            .iter()
            .map(|size| {
                format!(
                    r#"{{"file":"{hash}.safetensors","component":"unet","size":{size},"sha256":"{hash}"}}"#
                )
            })
            .collect();
        format!(
            r#"{{"format":"sd-wgsl-web-model","version":1,"name":"m","files":{{"unet/config.json":"{{}}","vae/config.json":"{{}}"}},"shards":[{}],"tensors":[]}}"#,
            shards.join(",")
        )
    }

    #[test]
    fn declared_sizes_are_bounded_before_anything_is_allocated() {
        WebManifest::from_json("m.json", manifest_with(&[1 << 20, 2 << 20]).as_bytes())
            .expect("a small manifest");
        for (shards, expect) in [
            (vec![4 << 30], "shard 0 declares 4294967296 bytes"),
            (vec![u64::MAX], "the largest allowed is 536870912"),
            (vec![MAX_SHARD_BYTES; 40], "the most allowed is 17179869184"),
            (vec![1; MAX_SHARDS + 1], "4097 shards"),
        ] {
            let err = WebManifest::from_json("m.json", manifest_with(&shards).as_bytes())
                .expect_err(expect)
                .to_string();
            assert!(err.contains(expect), "{expect}: {err}");
        }
    }
}
