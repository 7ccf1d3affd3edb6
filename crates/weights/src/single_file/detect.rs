//! What a file is: pickles refused by name, the architecture from the tensors present.

use super::*;

/// Whether `path` names a pickle checkpoint, by its extension.
pub fn is_pickle(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.iter().any(|p| e.eq_ignore_ascii_case(p)))
}

/// Refuses pickle checkpoints (by extension, without opening them) and anything that is not
/// `.safetensors`.
pub fn check_extension(path: &Path) -> Result<()> {
    if is_pickle(path) {
        return Err(WeightError::Pickle {
            path: path.to_owned(),
        });
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !ext.eq_ignore_ascii_case("safetensors") {
        return Err(WeightError::SingleFile {
            file: path.display().to_string(),
            reason: "not a .safetensors file: a model file must be a single-file .safetensors \
                     checkpoint (or give a model folder)"
                .into(),
        });
    }
    Ok(())
}

/// Reads the single-file checkpoint at `path` (see [`read_single_file`]), after
/// [`check_extension`].
pub fn open_single_file(path: &Path, options: &SingleFileOptions) -> Result<SingleFileModel> {
    check_extension(path)?;
    let file = SafetensorsFile::read(path)?;
    read_single_file(&file, options)
}

/// Detects the architecture of a single file's tensors: the text encoders' prefixes first,
/// then (for files without a text encoder) the UNet's context dimension.
pub fn detect_architecture(file: &SafetensorsFile) -> Result<Architecture> {
    let has = |prefix: &str| file.names().any(|n| n.starts_with(prefix));
    if has("conditioner.embedders.1.model.") || has("model.diffusion_model.label_emb.") {
        return Ok(Architecture::Sdxl);
    }
    if has("cond_stage_model.model.") {
        return Ok(Architecture::Sd2);
    }
    if has("cond_stage_model.transformer.") {
        return Ok(Architecture::Sd1);
    }
    let context = file
        .names()
        .filter(|n| n.starts_with(UNET_PREFIX) && n.ends_with("attn2.to_k.weight"))
        .find_map(|n| file.tensor(n))
        .and_then(|t| t.shape().get(1).copied());
    match context {
        Some(768) => Ok(Architecture::Sd1),
        Some(1024) => Ok(Architecture::Sd2),
        Some(2048) => Ok(Architecture::Sdxl),
        _ => Err(WeightError::SingleFile {
            file: file.label().to_owned(),
            reason: format!(
                "not a Stable Diffusion single-file checkpoint this version reads (SD 1.x, 2.x, \
                 XL): no `{UNET_PREFIX}*` UNet with a known text encoder \
                 (`cond_stage_model.*`, `conditioner.embedders.*`)"
            ),
        }),
    }
}

/// The highest `N` + 1 of names `<prefix>N.` present.
pub(super) fn count_indexed<'a>(names: impl Iterator<Item = &'a str>, prefix: &str) -> usize {
    names
        .filter_map(|n| split_index(n.strip_prefix(prefix)?).map(|(i, _)| i + 1))
        .max()
        .unwrap_or(0)
}
