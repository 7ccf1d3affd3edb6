//! A diffusers folder back into the original layout.

use super::*;

// Writing.

/// Writes the diffusers pipeline folder `folder` as one safetensors file in the original
/// layout of `arch` (the inverse of [`read_single_file`]'s renaming: OpenCLIP's q/k/v fused,
/// its projection transposed back, the VAE's attention weights as 1x1 convolutions). Element
/// types are kept. Returns the file's bytes.
///
/// # Errors
///
/// A missing component ([`WeightError::MissingFile`]), a tensor with no place in the original
/// layout ([`WeightError::SingleFile`] naming it).
pub fn write_single_file(folder: &Path, arch: Architecture) -> Result<Vec<u8>> {
    let label = folder.display().to_string();
    let unplaced = |component: &str, name: &str| WeightError::SingleFile {
        file: label.clone(),
        reason: format!(
            "{component}: `{name}` has no place in the {} layout",
            arch.name()
        ),
    };
    let mut out: BTreeMap<String, Out> = BTreeMap::new();
    let load = |component: &str| -> Result<Vec<SafetensorsFile>> {
        read_component_files(&find_component_files(folder, component, None)?)
    };

    let unet = load("unet")?;
    let unet_names: Vec<&str> = unet.iter().flat_map(SafetensorsFile::names).collect();
    let layout = UNetLayout {
        layers: count_indexed(
            unet_names
                .iter()
                .filter_map(|n| n.strip_prefix("down_blocks.0.")),
            "resnets.",
        ),
        up_with_attention: unet_names
            .iter()
            .filter_map(|n| n.strip_prefix("up_blocks."))
            .filter_map(split_index)
            .filter(|(_, rest)| rest.starts_with("attentions."))
            .map(|(b, _)| b)
            .collect(),
    };
    for t in unet.iter().flat_map(SafetensorsFile::tensors) {
        let key = unet_to_original(t.name(), &layout).ok_or_else(|| unplaced("unet", t.name()))?;
        out.insert(format!("{UNET_PREFIX}{key}"), copy_out(&t));
    }

    let vae = load("vae")?;
    let ups = count_indexed(
        vae.iter().flat_map(SafetensorsFile::names),
        "decoder.up_blocks.",
    );
    for t in vae.iter().flat_map(SafetensorsFile::tensors) {
        let (key, conv) =
            vae_to_original(t.name(), ups).ok_or_else(|| unplaced("vae", t.name()))?;
        let change = if conv { Change::Conv1x1 } else { Change::Same };
        let tensor = apply(change, copy_out(&t), false).ok_or_else(|| unplaced("vae", t.name()))?;
        out.insert(format!("{VAE_PREFIX}{key}"), tensor);
    }

    for part in arch.text_parts() {
        let files = load(part.component)?;
        // q, k, v of each layer, to be fused: (layer, weight|bias) -> [q, k, v].
        let mut fused: BTreeMap<(usize, &'static str), [Option<Out>; 3]> = BTreeMap::new();
        for t in files.iter().flat_map(SafetensorsFile::tensors) {
            let name = with_text_model(t.name());
            if name == "text_model.embeddings.position_ids" {
                continue;
            }
            if !part.open_clip {
                out.insert(format!("{}{name}", part.prefix), copy_out(&t));
                continue;
            }
            if name == "text_projection.weight" {
                let tensor = apply(Change::Transpose, copy_out(&t), false)
                    .ok_or_else(|| unplaced(part.component, t.name()))?;
                out.insert(format!("{}text_projection", part.prefix), tensor);
                continue;
            }
            if let Some(key) = rename(&OPEN_CLIP_TOP, &name, false) {
                out.insert(format!("{}{key}", part.prefix), copy_out(&t));
                continue;
            }
            let (n, rest) = name
                .strip_prefix("text_model.encoder.layers.")
                .and_then(split_index)
                .ok_or_else(|| unplaced(part.component, t.name()))?;
            let qkv = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .find_map(|(i, p)| {
                    let what = rest
                        .strip_prefix("self_attn.")?
                        .strip_prefix(p)?
                        .strip_prefix('.')?;
                    let what = ["weight", "bias"].into_iter().find(|w| *w == what)?;
                    Some((i, what))
                });
            if let Some((i, what)) = qkv {
                fused.entry((n, what)).or_default()[i] = Some(copy_out(&t));
                continue;
            }
            let key = rename(&OPEN_CLIP_LAYER, rest, false)
                .ok_or_else(|| unplaced(part.component, t.name()))?;
            out.insert(
                format!("{}transformer.resblocks.{n}.{key}", part.prefix),
                copy_out(&t),
            );
        }
        for ((n, what), [q, k, v]) in fused {
            let (Some(q), Some(k), Some(v)) = (q, k, v) else {
                return Err(unplaced(
                    part.component,
                    &format!("layer {n}: q, k and v {what} (one is missing)"),
                ));
            };
            let mut shape = q.shape.clone();
            shape[0] *= 3;
            let mut data = q.data;
            data.extend(k.data);
            data.extend(v.data);
            out.insert(
                format!(
                    "{}transformer.resblocks.{n}.attn.in_proj_{what}",
                    part.prefix
                ),
                Out {
                    dtype: q.dtype,
                    shape,
                    data,
                },
            );
        }
    }
    let list: Vec<(&str, Out)> = out
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
    serialize(&label, &list)
}
