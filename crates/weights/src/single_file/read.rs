//! Reading a single file into the files of a diffusers folder.

use super::*;

// Reading.

/// How to read a single file.
#[derive(Clone, Debug, Default)]
pub struct SingleFileOptions {
    /// A folder of diffusers configs (`unet/config.json`, `scheduler/scheduler_config.json`,
    /// `tokenizer/tokenizer.json`, ... any of them) used instead of the built-in published
    /// configs, as they are (diffusers' `from_single_file(config=...)`). Weight files in it are
    /// not read.
    pub config_dir: Option<PathBuf>,
    /// `epsilon` or `v_prediction`, overriding the scheduler config (by default: the config's,
    /// `v_prediction` for SD 2.x, and for any file with a `v_pred` key).
    pub prediction_type: Option<String>,
}

impl SingleFileOptions {
    /// The defaults: built-in configs, detected prediction type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses the configs in `dir` instead of the built-in ones.
    pub fn config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_dir = Some(dir.into());
        self
    }

    /// Sets the prediction type.
    pub fn prediction_type(mut self, prediction_type: impl Into<String>) -> Self {
        self.prediction_type = Some(prediction_type.into());
        self
    }
}

/// A single file read as a diffusers pipeline folder.
#[derive(Clone, Debug)]
pub struct SingleFileModel {
    /// The architecture detected.
    pub architecture: Architecture,
    /// The folder's files by their path in it (`unet/config.json`,
    /// `unet/diffusion_pytorch_model.safetensors`, `tokenizer/tokenizer.json`, ...).
    pub files: BTreeMap<String, Arc<[u8]>>,
    /// Tensors of the file that belong to no part of the model (EMA copies, schedule buffers,
    /// OpenCLIP's unused last layer in SD 2.x...), by their name in the file.
    pub ignored: Vec<String>,
}

/// Reads a single-file checkpoint as the files of a diffusers folder: see the module docs.
///
/// # Errors
///
/// [`WeightError::SingleFile`] for a file that is no SD model or lacks a part (naming it and
/// the key prefix looked for), [`WeightError::Io`] / [`WeightError::Format`] for an override
/// config folder that cannot be read, [`WeightError::Serialize`].
pub fn read_single_file(
    file: &SafetensorsFile,
    options: &SingleFileOptions,
) -> Result<SingleFileModel> {
    let arch = detect_architecture(file)?;
    let label = file.label().to_owned();
    let part_error = |reason: String| WeightError::SingleFile {
        file: label.clone(),
        reason,
    };
    let overrides = match &options.config_dir {
        Some(dir) => read_config_dir(dir)?,
        None => BTreeMap::new(),
    };
    let mut configs: BTreeMap<String, Value> = BTreeMap::new();
    for (path, text) in arch.builtin_configs() {
        let from_override = overrides.contains_key(*path);
        let text = overrides.get(*path).map_or(*text, String::as_str);
        let value: Value = serde_json::from_str(text).map_err(|e| WeightError::SingleFile {
            file: if from_override {
                options
                    .config_dir
                    .as_deref()
                    .map_or_else(String::new, |d| d.join(path).display().to_string())
            } else {
                format!("built-in {path}")
            },
            reason: format!("invalid JSON: {e}"),
        })?;
        configs.insert((*path).to_owned(), value);
    }

    let names: Vec<&str> = file.names().collect();
    if let Some((name, index)) = keys::index_out_of_range(names.iter().copied()) {
        return Err(part_error(format!(
            "`{name}`: index {index} is past {}, more blocks or layers than any Stable \
             Diffusion architecture has",
            keys::MAX_KEY_INDEX
        )));
    }
    let mut components: BTreeMap<&'static str, BTreeMap<String, Out>> = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut taken = vec![false; names.len()];

    // UNet.
    let unet_keys = || names.iter().filter_map(|n| n.strip_prefix(UNET_PREFIX));
    let downsamplers = unet_keys()
        .filter(|k| k.starts_with("input_blocks.") && k.contains(".0.op."))
        .filter_map(|k| split_index(k.strip_prefix("input_blocks.")?).map(|(i, _)| i))
        .collect::<BTreeSet<_>>()
        .len();
    let inputs = count_indexed(unet_keys(), "input_blocks.");
    if inputs == 0 {
        return Err(part_error(format!(
            "no UNet in the file (no `{UNET_PREFIX}input_blocks.*`)"
        )));
    }
    // `inputs` = blocks x (layers + 1): conv_in, then per block its ResNets and a downsampler
    // (none after the last block).
    let blocks = downsamplers + 1;
    let unet_layers = (inputs / blocks).saturating_sub(1).max(1);
    // VAE.
    let vae_keys = || names.iter().filter_map(|n| n.strip_prefix(VAE_PREFIX));
    let ups = count_indexed(vae_keys(), "decoder.up.");
    if ups == 0 {
        return Err(part_error(format!(
            "no VAE in the file (no `{VAE_PREFIX}decoder.up.*`); a checkpoint without its VAE \
             needs the VAE from elsewhere"
        )));
    }
    // Text encoders: how many OpenCLIP residual blocks are used. SD 2.x's published
    // checkpoints hold 24 and the pipeline uses the penultimate layer's output (diffusers'
    // config: 23 layers, the last block's weights unused); a file with fewer (written by a
    // converter from the diffusers form) uses them all.
    let mut text_layers: BTreeMap<&str, usize> = BTreeMap::new();
    for part in arch.text_parts() {
        if !names.iter().any(|n| n.starts_with(part.prefix)) {
            return Err(part_error(format!(
                "no {} text encoder in the file (no `{}*`)",
                arch.name(),
                part.prefix
            )));
        }
        let config_path = format!("{}/config.json", part.component);
        let configured = configs
            .get(&config_path)
            .and_then(|c| c.get("num_hidden_layers"))
            .and_then(Value::as_u64)
            .map_or(usize::MAX, |n| n as usize);
        let present = if part.open_clip {
            count_indexed(
                names.iter().filter_map(|n| n.strip_prefix(part.prefix)),
                "transformer.resblocks.",
            )
        } else {
            count_indexed(
                names
                    .iter()
                    .filter_map(|n| n.strip_prefix(part.prefix))
                    .map(|n| n.strip_prefix("text_model.").unwrap_or(n)),
                "encoder.layers.",
            )
        };
        text_layers.insert(part.component, present.min(configured));
    }

    for (idx, original) in names.iter().enumerate() {
        let Some(t) = file.tensor(original) else {
            continue;
        };
        if let Some(key) = original.strip_prefix(UNET_PREFIX) {
            if let Some(name) = unet_to_diffusers(key, unet_layers) {
                components
                    .entry("unet")
                    .or_default()
                    .insert(name, copy_out(&t));
                taken[idx] = true;
            }
            continue;
        }
        if let Some(key) = original.strip_prefix(VAE_PREFIX) {
            if let Some((name, conv)) = vae_to_diffusers(key, ups) {
                let change = if conv { Change::Conv1x1 } else { Change::Same };
                let out = apply(change, copy_out(&t), true).ok_or_else(|| {
                    part_error(format!(
                        "`{original}` has an unexpected shape {:?}",
                        t.shape()
                    ))
                })?;
                components.entry("vae").or_default().insert(name, out);
                taken[idx] = true;
            }
            continue;
        }
        for part in arch.text_parts() {
            let Some(key) = original.strip_prefix(part.prefix) else {
                continue;
            };
            let layers = text_layers.get(part.component).copied().unwrap_or(0);
            let target = components.entry(part.component).or_default();
            if !part.open_clip {
                let name = with_text_model(key);
                let layer = name
                    .strip_prefix("text_model.encoder.layers.")
                    .and_then(split_index)
                    .map(|(n, _)| n);
                let keep = name != "text_model.embeddings.position_ids"
                    && (part.projection || !name.starts_with("text_projection"))
                    && layer.is_none_or(|n| n < layers);
                if keep {
                    target.insert(name, copy_out(&t));
                    taken[idx] = true;
                }
                break;
            }
            match open_clip_to_diffusers(key, layers, part.projection) {
                Some(OpenClipName::One(name, change)) => {
                    let out = apply(change, copy_out(&t), true).ok_or_else(|| {
                        part_error(format!(
                            "`{original}` has an unexpected shape {:?}",
                            t.shape()
                        ))
                    })?;
                    target.insert(name, out);
                    taken[idx] = true;
                }
                Some(OpenClipName::Fused { layer, what }) => {
                    let whole = copy_out(&t);
                    let rows = whole.shape.first().copied().unwrap_or(0);
                    if rows % 3 != 0 || rows == 0 {
                        return Err(part_error(format!(
                            "`{original}` has shape {:?}: not q, k and v stacked",
                            t.shape()
                        )));
                    }
                    let chunk = whole.data.len() / 3;
                    let mut shape = whole.shape.clone();
                    shape[0] = rows / 3;
                    for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                        target.insert(
                            format!("text_model.encoder.layers.{layer}.self_attn.{proj}.{what}"),
                            Out {
                                dtype: whole.dtype,
                                shape: shape.clone(),
                                data: whole.data[i * chunk..(i + 1) * chunk].to_vec(),
                            },
                        );
                    }
                    taken[idx] = true;
                }
                None => {}
            }
            break;
        }
    }
    for (idx, name) in names.iter().enumerate() {
        if !taken[idx] {
            ignored.push((*name).to_owned());
        }
    }

    // Configs: the shape-derived values, unless the user gave the configs.
    let shapes = |c: &str| -> BTreeMap<&str, &[usize]> {
        components
            .get(c)
            .map(|m| {
                m.iter()
                    .map(|(n, t)| (n.as_str(), t.shape.as_slice()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pooled = shapes("text_encoder_2")
        .get("text_projection.weight")
        .map(|s| s[0]);
    let set = |configs: &mut BTreeMap<String, Value>, path: &str, patch: Value| {
        if overrides.contains_key(path) {
            return;
        }
        if let (Some(Value::Object(config)), Value::Object(patch)) = (configs.get_mut(path), patch)
        {
            config.extend(patch);
        }
    };
    set(
        &mut configs,
        "unet/config.json",
        unet_patch(&shapes("unet"), pooled),
    );
    set(&mut configs, "vae/config.json", vae_patch(&shapes("vae")));
    for part in arch.text_parts() {
        set(
            &mut configs,
            &format!("{}/config.json", part.component),
            text_patch(&shapes(part.component)),
        );
    }
    let v_pred = names.contains(&"v_pred");
    let prediction = options
        .prediction_type
        .clone()
        .or_else(|| v_pred.then(|| "v_prediction".to_owned()));
    if let (Some(p), Some(Value::Object(s))) = (
        prediction,
        configs.get_mut("scheduler/scheduler_config.json"),
    ) {
        s.insert("prediction_type".into(), Value::String(p));
    }

    let mut files: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();
    for (path, value) in &configs {
        let text = serde_json::to_string_pretty(value).map_err(|e| WeightError::Serialize {
            file: path.clone(),
            reason: e.to_string(),
        })?;
        files.insert(path.clone(), Arc::from(text.into_bytes()));
    }
    for (path, text) in &overrides {
        files
            .entry(path.clone())
            .or_insert_with(|| Arc::from(text.clone().into_bytes()));
    }
    for tokenizer in ["tokenizer", "tokenizer_2"] {
        let config = format!("{tokenizer}/tokenizer_config.json");
        let json = format!("{tokenizer}/tokenizer.json");
        if files.contains_key(&config) && !files.contains_key(&json) {
            files.insert(json, Arc::from(CLIP_TOKENIZER_JSON));
        }
    }
    for (component, tensors) in &components {
        let base = if component.starts_with("text_encoder") {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
        let path = format!("{component}/{base}.safetensors");
        let list: Vec<(&str, Out)> = tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.as_str(),
                    Out {
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        data: t.data.clone(),
                    },
                )
            })
            .collect();
        let bytes = serialize(&path, &list)?;
        files.insert(path, Arc::from(bytes));
    }
    Ok(SingleFileModel {
        architecture: arch,
        files,
        ignored,
    })
}

impl SingleFileModel {
    /// Writes the files as a diffusers pipeline folder under `dir` (created if needed), for
    /// the converters, which read folders.
    pub fn save_folder(&self, dir: &Path) -> Result<()> {
        for (path, bytes) in &self.files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|source| WeightError::Io {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            std::fs::write(&target, bytes).map_err(|source| WeightError::Io {
                path: target.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The config files of an override folder: `model_index.json` and, in its subfolders,
/// `config.json`, `scheduler_config.json`, `tokenizer.json`, `tokenizer_config.json`.
pub(super) fn read_config_dir(dir: &Path) -> Result<BTreeMap<String, String>> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| WeightError::Io { path, source }
    };
    let mut out = BTreeMap::new();
    let index = dir.join("model_index.json");
    if !dir.is_dir() {
        return Err(WeightError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the config folder does not exist",
            ),
        });
    }
    if index.is_file() {
        out.insert(
            "model_index.json".to_owned(),
            std::fs::read_to_string(&index).map_err(io(&index))?,
        );
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let sub = entry.file_name().to_string_lossy().into_owned();
        if sub.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        for name in [
            "config.json",
            "scheduler_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            let path = entry.path().join(name);
            if path.is_file() {
                out.insert(
                    format!("{sub}/{name}"),
                    std::fs::read_to_string(&path).map_err(io(&path))?,
                );
            }
        }
    }
    Ok(out)
}
