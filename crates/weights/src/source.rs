//! The weights of one model component (one or more safetensors files), under normalised names,
//! read through scoped paths that check shapes and remember what was read.
//!
//! Models build weight names the way diffusers' module tree does:
//! `source.scope("down_blocks").at(0).scope("resnets").at(1).tensor_f32("conv1.weight", &[..])`
//! reads `down_blocks.0.resnets.1.conv1.weight`. A missing name is an error naming the full path
//! (with present names that share its ending); a wrong shape names both shapes. Names from other
//! checkpoint layouts are normalised once, when the source is built, by a [`Renamer`]; after
//! loading, [`WeightSource::unused`] lists what the model never read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use half::f16;
use safetensors::Dtype;

use crate::error::{Result, WeightError};
use crate::file::{SafetensorsFile, TensorData};

/// A custom renaming function: the checkpoint's name in, the normalised name out (`None` drops
/// the tensor).
pub type RenameFn = dyn Fn(&str) -> Option<String> + Send + Sync;

#[derive(Clone)]
enum Rule {
    StripPrefix(String),
    Ignore(String),
    Map(Arc<RenameFn>),
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StripPrefix(p) => write!(f, "StripPrefix({p:?})"),
            Self::Ignore(n) => write!(f, "Ignore({n:?})"),
            Self::Map(_) => f.write_str("Map(..)"),
        }
    }
}

/// Maps a checkpoint's tensor names to the names the models use, by rules applied in order.
///
/// The default renamer changes nothing.
#[derive(Clone, Debug, Default)]
pub struct Renamer {
    rules: Vec<Rule>,
}

impl Renamer {
    /// A renamer that keeps every name as it is.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Adds a rule: remove `prefix` from names that start with it (others pass unchanged).
    pub fn strip_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.rules.push(Rule::StripPrefix(prefix.into()));
        self
    }

    /// Adds a rule: drop the tensor with this name (as renamed by the earlier rules). For
    /// buffers that are not weights, such as CLIP's `embeddings.position_ids`; dropped names
    /// are listed by [`WeightSource::ignored`], not by [`WeightSource::unused`].
    pub fn ignore(mut self, name: impl Into<String>) -> Self {
        self.rules.push(Rule::Ignore(name.into()));
        self
    }

    /// Adds a rule given by a function (e.g. a single-file checkpoint's key map); returning
    /// `None` drops the tensor.
    pub fn map(mut self, f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.rules.push(Rule::Map(Arc::new(f)));
        self
    }

    /// The CLIP text encoders (`CLIPTextModel`, `CLIPTextModelWithProjection`): transformers 4
    /// saves `text_model.embeddings...`, transformers 5 saves `embeddings...`; both become the
    /// latter. The `embeddings.position_ids` buffer (an `arange`, in older checkpoints) is
    /// ignored.
    pub fn clip_text_encoder() -> Self {
        Self::identity()
            .strip_prefix("text_model.")
            .ignore("embeddings.position_ids")
    }

    /// The renamer a diffusers pipeline component needs: [`Renamer::clip_text_encoder`] for
    /// `text_encoder*` folders, the identity otherwise.
    pub fn for_component(component: &str) -> Self {
        if component.starts_with("text_encoder") {
            Self::clip_text_encoder()
        } else {
            Self::identity()
        }
    }

    /// The normalised name of `name`, or `None` when a rule drops it.
    pub fn rename(&self, name: &str) -> Option<String> {
        let mut name = name.to_owned();
        for rule in &self.rules {
            match rule {
                Rule::StripPrefix(p) => {
                    if let Some(rest) = name.strip_prefix(p.as_str()) {
                        name = rest.to_owned();
                    }
                }
                Rule::Ignore(n) => {
                    if name == *n {
                        return None;
                    }
                }
                Rule::Map(f) => name = f(&name)?,
            }
        }
        Some(name)
    }
}

#[derive(Debug)]
struct Entry {
    /// Index into `files`.
    file: usize,
    /// The name in the file.
    original: String,
    used: AtomicBool,
}

/// The tensors of one model component, from one or more files, by normalised name.
///
/// Reads mark tensors as used (through a shared reference: the flags are atomic), so after
/// loading [`WeightSource::unused`] lists the checkpoint's tensors the model never asked for.
#[derive(Debug)]
pub struct WeightSource {
    component: String,
    files: Vec<SafetensorsFile>,
    entries: BTreeMap<String, Entry>,
    ignored: Vec<String>,
}

impl WeightSource {
    /// Indexes the tensors of `files` under the names `renamer` gives them. `component` names
    /// the source in errors (`unet`, `text_encoder`, ...). Two tensors with the same final name
    /// are a [`WeightError::Duplicate`].
    pub fn new(
        component: impl Into<String>,
        files: Vec<SafetensorsFile>,
        renamer: &Renamer,
    ) -> Result<Self> {
        let component = component.into();
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut ignored = Vec::new();
        for (i, file) in files.iter().enumerate() {
            for original in file.names() {
                let Some(name) = renamer.rename(original) else {
                    ignored.push(format!("{}: {original}", file.label()));
                    continue;
                };
                if let Some(first) = entries.get(&name) {
                    let first_file = files.get(first.file).map_or("?", SafetensorsFile::label);
                    return Err(WeightError::Duplicate {
                        component,
                        first: format!("`{}` in {first_file}", first.original),
                        second: format!("`{original}` in {}", file.label()),
                        name,
                    });
                }
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        original: original.to_owned(),
                        used: AtomicBool::new(false),
                    },
                );
            }
        }
        Ok(Self {
            component,
            files,
            entries,
            ignored,
        })
    }

    /// One file's tensors under their own names.
    pub fn from_file(component: impl Into<String>, file: SafetensorsFile) -> Result<Self> {
        Self::new(component, vec![file], &Renamer::identity())
    }

    /// The component's name, as used in errors.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// The files the tensors come from.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The normalised names, sorted.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// How many tensors (not counting ignored ones).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scope at the root: no prefix.
    pub fn root(&self) -> Scope<'_> {
        Scope {
            source: self,
            prefix: String::new(),
        }
    }

    /// The scope `name.` (e.g. `down_blocks`).
    pub fn scope(&self, name: &str) -> Scope<'_> {
        self.root().scope(name)
    }

    /// Whether a tensor of this (full, normalised) name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The tensor called `name` without checking its shape or marking it used.
    fn lookup(&self, name: &str) -> Result<(TensorData<'_>, &Entry)> {
        let found = self.entries.get(name).and_then(|entry| {
            let data = self.files.get(entry.file)?.tensor(&entry.original)?;
            Some((data, entry))
        });
        found.ok_or_else(|| WeightError::Missing {
            component: self.component.clone(),
            name: name.to_owned(),
            suggestions: self.suggestions(name),
        })
    }

    /// The shape of tensor `name` (does not mark it used).
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(self.lookup(name)?.0.shape())
    }

    /// The element type of tensor `name` (does not mark it used).
    pub fn dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self.lookup(name)?.0.dtype())
    }

    /// Tensor `name`, whose shape must be `shape`, marked used.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorData<'_>> {
        let (data, entry) = self.lookup(name)?;
        if data.shape() != shape {
            return Err(WeightError::Shape {
                component: self.component.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                got: data.shape().to_vec(),
            });
        }
        entry.used.store(true, Ordering::Relaxed);
        Ok(data)
    }

    /// Tensor `name` as `f32` (see [`TensorData::to_f32`]), checking its shape.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.tensor(name, shape)?.to_f32()
    }

    /// Tensor `name` as `f16` (see [`TensorData::to_f16`]), checking its shape.
    pub fn tensor_f16(&self, name: &str, shape: &[usize]) -> Result<Vec<f16>> {
        self.tensor(name, shape)?.to_f16()
    }

    /// The tensors never read through [`WeightSource::tensor`] and its variants, sorted. The
    /// loader warns about them: a checkpoint with weights the model does not use is usually a
    /// different architecture or a wrong config.
    pub fn unused(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.used.load(Ordering::Relaxed))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The tensors the renamer dropped, as `file: original name`.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Present names that end like `name` (its last two dot-separated parts, e.g.
    /// `conv1.weight`), those sharing the longest prefix with it first; at most five.
    fn suggestions(&self, name: &str) -> Vec<String> {
        let parts: Vec<&str> = name.rsplitn(3, '.').collect();
        let suffix = match parts.as_slice() {
            [last, second, _] => format!(".{second}.{last}"),
            _ => name.to_owned(),
        };
        let mut found: Vec<(usize, &str)> = self
            .entries
            .keys()
            .filter(|k| k.ends_with(&suffix) || k.as_str() == suffix.trim_start_matches('.'))
            .map(|k| {
                let common = k
                    .bytes()
                    .zip(name.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                (common, k.as_str())
            })
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        found
            .into_iter()
            .take(5)
            .map(|(_, k)| k.to_owned())
            .collect()
    }
}

/// A position in a [`WeightSource`]'s name tree: a prefix such as `down_blocks.0.resnets.1.`.
#[derive(Clone, Debug)]
pub struct Scope<'a> {
    source: &'a WeightSource,
    /// Empty, or ends with `.`.
    prefix: String,
}

impl<'a> Scope<'a> {
    /// The child scope `name` (which may itself contain dots).
    pub fn scope(&self, name: &str) -> Scope<'a> {
        Scope {
            source: self.source,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    /// The child scope of list item `index` (`down_blocks.0`).
    pub fn at(&self, index: usize) -> Scope<'a> {
        self.scope(&index.to_string())
    }

    /// The full name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// This scope's prefix without the trailing dot (empty at the root).
    pub fn prefix(&self) -> &str {
        self.prefix.strip_suffix('.').unwrap_or(&self.prefix)
    }

    /// The source this scope reads from.
    pub fn source(&self) -> &'a WeightSource {
        self.source
    }

    /// Whether tensor `name` exists in this scope.
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.path(name))
    }

    /// The shape of tensor `name` in this scope (does not mark it used).
    pub fn shape(&self, name: &str) -> Result<&'a [usize]> {
        self.source.shape(&self.path(name))
    }

    /// Tensor `name` in this scope, whose shape must be `shape`, marked used.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorData<'a>> {
        self.source.tensor(&self.path(name), shape)
    }

    /// Tensor `name` in this scope as `f32`, checking its shape.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.source.tensor_f32(&self.path(name), shape)
    }

    /// Tensor `name` in this scope as `f16`, checking its shape.
    pub fn tensor_f16(&self, name: &str, shape: &[usize]) -> Result<Vec<f16>> {
        self.source.tensor_f16(&self.path(name), shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with f32 tensors of the given names and shapes (values 0, 1, 2, ...).
    fn file(label: &str, tensors: &[(&str, &[usize])]) -> Result<SafetensorsFile> {
        struct T(Vec<usize>, Vec<u8>);
        impl safetensors::View for &T {
            fn dtype(&self) -> Dtype {
                Dtype::F32
            }
            fn shape(&self) -> &[usize] {
                &self.0
            }
            fn data(&self) -> std::borrow::Cow<'_, [u8]> {
                (&self.1[..]).into()
            }
            fn data_len(&self) -> usize {
                self.1.len()
            }
        }
        let owned: Vec<(String, T)> = tensors
            .iter()
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                let data = (0..count).flat_map(|i| (i as f32).to_le_bytes()).collect();
                ((*n).to_owned(), T(s.to_vec(), data))
            })
            .collect();
        let bytes = safetensors::serialize(owned.iter().map(|(n, t)| (n.as_str(), t)), None)
            .map_err(|e| WeightError::Serialize {
                file: label.to_owned(),
                reason: e.to_string(),
            })?;
        SafetensorsFile::from_vec(label, bytes)
    }

    #[test]
    fn scopes_shapes_and_unused() -> Result<()> {
        let f = file(
            "unet.safetensors",
            &[
                ("down_blocks.0.resnets.1.conv1.weight", &[4, 2, 3, 3]),
                ("down_blocks.0.resnets.1.conv1.bias", &[4]),
                ("down_blocks.1.resnets.0.conv1.weight", &[4, 4, 3, 3]),
                ("conv_in.weight", &[4, 3, 3, 3]),
            ],
        )?;
        let source = WeightSource::from_file("unet", f)?;
        let resnet = source.scope("down_blocks").at(0).scope("resnets").at(1);
        assert_eq!(resnet.prefix(), "down_blocks.0.resnets.1");
        assert!(resnet.contains("conv1.bias"));
        assert_eq!(resnet.shape("conv1.weight")?, &[4, 2, 3, 3]);
        let w = resnet.tensor_f32("conv1.weight", &[4, 2, 3, 3])?;
        assert_eq!(w.len(), 72);
        assert_eq!(w[71], 71.0);
        let b = resnet.tensor_f16("conv1.bias", &[4])?;
        assert_eq!(b[3], f16::from_f32(3.0));

        let err = resnet
            .tensor_f32("conv1.bias", &[8])
            .expect_err("wrong shape");
        assert!(matches!(
            &err,
            WeightError::Shape { name, expected, got, .. }
                if name == "down_blocks.0.resnets.1.conv1.bias" && expected == &[8] && got == &[4]
        ));

        let err = source
            .scope("down_blocks")
            .at(0)
            .scope("resnets")
            .at(0)
            .tensor_f32("conv1.weight", &[4, 2, 3, 3])
            .expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("`down_blocks.0.resnets.0.conv1.weight` not found"),
            "{msg}"
        );
        let WeightError::Missing { suggestions, .. } = err else {
            panic!("expected Missing, got {err}");
        };
        assert_eq!(
            suggestions,
            [
                "down_blocks.0.resnets.1.conv1.weight",
                "down_blocks.1.resnets.0.conv1.weight"
            ]
        );

        assert_eq!(
            source.unused(),
            ["conv_in.weight", "down_blocks.1.resnets.0.conv1.weight"]
        );
        Ok(())
    }

    #[test]
    fn renamer_normalises_and_detects_collisions() -> Result<()> {
        let renamer = Renamer::clip_text_encoder();
        assert_eq!(
            renamer
                .rename("text_model.final_layer_norm.weight")
                .as_deref(),
            Some("final_layer_norm.weight")
        );
        assert_eq!(
            renamer.rename("final_layer_norm.weight").as_deref(),
            Some("final_layer_norm.weight")
        );
        assert_eq!(renamer.rename("text_model.embeddings.position_ids"), None);
        assert_eq!(
            renamer.rename("text_projection.weight").as_deref(),
            Some("text_projection.weight")
        );

        let both = file(
            "te.safetensors",
            &[
                ("text_model.final_layer_norm.weight", &[2]),
                ("final_layer_norm.weight", &[2]),
            ],
        )?;
        let err = WeightSource::new("text_encoder", vec![both], &renamer).expect_err("collision");
        assert!(
            matches!(err, WeightError::Duplicate { ref name, .. } if name == "final_layer_norm.weight")
        );

        // The same name in two shards.
        let a = file("a.safetensors", &[("x", &[1])])?;
        let b = file("b.safetensors", &[("x", &[1])])?;
        let err =
            WeightSource::new("unet", vec![a, b], &Renamer::identity()).expect_err("in two shards");
        let msg = err.to_string();
        assert!(
            msg.contains("a.safetensors") && msg.contains("b.safetensors"),
            "{msg}"
        );

        let custom = Renamer::identity().map(|n| n.strip_prefix("model.").map(str::to_owned));
        let f = file("c", &[("model.a", &[1]), ("other", &[1])])?;
        let source = WeightSource::new("c", vec![f], &custom)?;
        assert_eq!(source.names().collect::<Vec<_>>(), ["a"]);
        assert_eq!(source.ignored(), ["c: other"]);
        Ok(())
    }
}
