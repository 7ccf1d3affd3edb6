//! The key tables between the original layout and diffusers' names, read left to right when
//! loading and right to left when writing, and the tensor changes some renames need.

use super::*;

// The key tables: (original fragment, diffusers fragment), read left to right when loading and
// right to left when writing.

/// UNet names outside the blocks.
pub(super) const UNET_TOP: [(&str, &str); 7] = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("label_emb.0.0.", "add_embedding.linear_1."),
    ("label_emb.0.2.", "add_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
];

/// Inside a UNet ResNet block (`ResBlock` -> `ResnetBlock2D`).
pub(super) const UNET_RESNET: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

/// Inside a VAE ResNet block.
pub(super) const VAE_RESNET: [(&str, &str); 5] = [
    ("norm1.", "norm1."),
    ("conv1.", "conv1."),
    ("norm2.", "norm2."),
    ("conv2.", "conv2."),
    ("nin_shortcut.", "conv_shortcut."),
];

/// Inside the VAE's mid-block attention (`AttnBlock` -> `Attention`); q, k, v and proj_out are
/// 1x1 convolutions in the original, linear layers in diffusers.
pub(super) const VAE_ATTENTION: [(&str, &str); 5] = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
];

/// The VAE's encoder/decoder names outside the numbered blocks (after `encoder.`/`decoder.`).
pub(super) const VAE_SIDE: [(&str, &str); 3] = [
    ("conv_in.", "conv_in."),
    ("conv_out.", "conv_out."),
    ("norm_out.", "conv_norm_out."),
];

/// OpenCLIP's names outside the residual blocks.
pub(super) const OPEN_CLIP_TOP: [(&str, &str); 3] = [
    (
        "token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
    ),
    (
        "positional_embedding",
        "text_model.embeddings.position_embedding.weight",
    ),
    ("ln_final.", "text_model.final_layer_norm."),
];

/// Inside an OpenCLIP residual block (`transformer.resblocks.N.` -> `text_model.encoder.layers.N.`);
/// the fused `attn.in_proj_{weight,bias}` is split separately.
pub(super) const OPEN_CLIP_LAYER: [(&str, &str); 5] = [
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
];

/// `(from, to)` of the first pair of `table` whose `from` (left when `forward`, else right) starts
/// `name`, with the rest appended to `to`.
pub(super) fn rename(table: &[(&str, &str)], name: &str, forward: bool) -> Option<String> {
    table.iter().find_map(|&(o, d)| {
        let (from, to) = if forward { (o, d) } else { (d, o) };
        name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
    })
}

/// The largest block or layer index a key of any architecture this reads holds (SD's UNet
/// counts to 11, SDXL's to 8, OpenCLIP to 31): larger ones are refused before anything is
/// counted, looped over or allocated from them.
pub(super) const MAX_KEY_INDEX: usize = 1024;

/// `"12.rest"` -> `(12, "rest")`; `None` past [`MAX_KEY_INDEX`].
pub(super) fn split_index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    let index = n.parse().ok().filter(|&i| i <= MAX_KEY_INDEX)?;
    Some((index, rest))
}

/// The first of `names` with a numeric part past [`MAX_KEY_INDEX`], and that number's text.
pub(super) fn index_out_of_range<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Option<(&'a str, &'a str)> {
    names.into_iter().find_map(|name| {
        name.split('.')
            .find(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_digit())
                    && part.parse::<usize>().ok().is_none_or(|i| i > MAX_KEY_INDEX)
            })
            .map(|part| (name, part))
    })
}

/// The UNet's block structure, which the flat original numbering depends on.
#[derive(Clone, Debug)]
pub(super) struct UNetLayout {
    /// `layers_per_block` (ResNets per down block; up blocks have one more).
    pub(super) layers: usize,
    /// Up blocks that have attentions (their upsampler moves from sub-index 1 to 2).
    pub(super) up_with_attention: BTreeSet<usize>,
}

/// A UNet name, original (without `model.diffusion_model.`) -> diffusers.
pub(super) fn unet_to_diffusers(key: &str, layers: usize) -> Option<String> {
    if let Some(name) = rename(&UNET_TOP, key, true) {
        return Some(name);
    }
    let per = layers + 1;
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (sub, rest) = split_index(rest)?;
        let (b, j) = ((i.checked_sub(1)?) / per, (i - 1) % per);
        return match sub {
            0 if rest.starts_with("op.") => Some(format!(
                "down_blocks.{b}.downsamplers.0.conv.{}",
                rest.strip_prefix("op.")?
            )),
            0 => Some(format!(
                "down_blocks.{b}.resnets.{j}.{}",
                rename(&UNET_RESNET, rest, true)?
            )),
            1 => Some(format!("down_blocks.{b}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (sub, rest) = split_index(rest)?;
        return match sub {
            0 | 2 => Some(format!(
                "mid_block.resnets.{}.{}",
                sub / 2,
                rename(&UNET_RESNET, rest, true)?
            )),
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("output_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (sub, rest) = split_index(rest)?;
        let (b, j) = (i / per, i % per);
        return match sub {
            0 => Some(format!(
                "up_blocks.{b}.resnets.{j}.{}",
                rename(&UNET_RESNET, rest, true)?
            )),
            1 | 2 if rest.starts_with("conv.") => {
                Some(format!("up_blocks.{b}.upsamplers.0.{rest}"))
            }
            1 => Some(format!("up_blocks.{b}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    None
}

/// A UNet name, diffusers -> original (without `model.diffusion_model.`).
pub(super) fn unet_to_original(name: &str, layout: &UNetLayout) -> Option<String> {
    if let Some(key) = rename(&UNET_TOP, name, false) {
        return Some(key);
    }
    let per = layout.layers + 1;
    if let Some(rest) = name.strip_prefix("down_blocks.") {
        let (b, rest) = split_index(rest)?;
        if let Some(rest) = rest.strip_prefix("downsamplers.0.conv.") {
            return Some(format!(
                "input_blocks.{}.0.op.{rest}",
                1 + b * per + layout.layers
            ));
        }
        let (kind, rest) = rest.split_once('.')?;
        let (j, rest) = split_index(rest)?;
        let i = 1 + b * per + j;
        return match kind {
            "resnets" => Some(format!(
                "input_blocks.{i}.0.{}",
                rename(&UNET_RESNET, rest, false)?
            )),
            "attentions" => Some(format!("input_blocks.{i}.1.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("mid_block.") {
        let (kind, rest) = rest.split_once('.')?;
        let (j, rest) = split_index(rest)?;
        return match (kind, j) {
            ("resnets", 0 | 1) => Some(format!(
                "middle_block.{}.{}",
                j * 2,
                rename(&UNET_RESNET, rest, false)?
            )),
            ("attentions", 0) => Some(format!("middle_block.1.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("up_blocks.") {
        let (b, rest) = split_index(rest)?;
        if let Some(rest) = rest.strip_prefix("upsamplers.0.") {
            let sub = if layout.up_with_attention.contains(&b) {
                2
            } else {
                1
            };
            return Some(format!(
                "output_blocks.{}.{sub}.{rest}",
                b * per + layout.layers
            ));
        }
        let (kind, rest) = rest.split_once('.')?;
        let (j, rest) = split_index(rest)?;
        let i = b * per + j;
        return match kind {
            "resnets" => Some(format!(
                "output_blocks.{i}.0.{}",
                rename(&UNET_RESNET, rest, false)?
            )),
            "attentions" => Some(format!("output_blocks.{i}.1.{rest}")),
            _ => None,
        };
    }
    None
}

/// A VAE name, original (without `first_stage_model.`) -> diffusers; `ups` is the decoder's
/// number of up blocks (the original numbers them from the bottom, diffusers from the top).
/// The flag says the weight is a 1x1 convolution that becomes a linear layer.
pub(super) fn vae_to_diffusers(key: &str, ups: usize) -> Option<(String, bool)> {
    for plain in ["quant_conv.", "post_quant_conv."] {
        if key.starts_with(plain) {
            return Some((key.to_owned(), false));
        }
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let mapped = |s: String| Some((format!("{side}.{s}"), false));
    if let Some(name) = rename(&VAE_SIDE, rest, true) {
        return mapped(name);
    }
    if let Some(rest) = rest.strip_prefix("mid.") {
        if let Some(r) = rest.strip_prefix("block_1.") {
            return mapped(format!(
                "mid_block.resnets.0.{}",
                rename(&VAE_RESNET, r, true)?
            ));
        }
        if let Some(r) = rest.strip_prefix("block_2.") {
            return mapped(format!(
                "mid_block.resnets.1.{}",
                rename(&VAE_RESNET, r, true)?
            ));
        }
        let r = rest.strip_prefix("attn_1.")?;
        let name = rename(&VAE_ATTENTION, r, true)?;
        let conv = r.ends_with(".weight") && !r.starts_with("norm.");
        return Some((format!("{side}.mid_block.attentions.0.{name}"), conv));
    }
    let (kind, rest) = rest.split_once('.')?;
    let (b, rest) = split_index(rest)?;
    let (block, sampler) = match kind {
        "down" => (b, "downsample.conv."),
        "up" => (ups.checked_sub(b + 1)?, "upsample.conv."),
        _ => return None,
    };
    let blocks = if kind == "down" {
        "down_blocks"
    } else {
        "up_blocks"
    };
    if let Some(r) = rest.strip_prefix(sampler) {
        let samplers = if kind == "down" {
            "downsamplers"
        } else {
            "upsamplers"
        };
        return mapped(format!("{blocks}.{block}.{samplers}.0.conv.{r}"));
    }
    let (j, r) = split_index(rest.strip_prefix("block.")?)?;
    mapped(format!(
        "{blocks}.{block}.resnets.{j}.{}",
        rename(&VAE_RESNET, r, true)?
    ))
}

/// A VAE name, diffusers -> original; the flag says the linear weight becomes a 1x1 convolution.
pub(super) fn vae_to_original(name: &str, ups: usize) -> Option<(String, bool)> {
    for plain in ["quant_conv.", "post_quant_conv."] {
        if name.starts_with(plain) {
            return Some((name.to_owned(), false));
        }
    }
    let (side, rest) = name.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let mapped = |s: String| Some((format!("{side}.{s}"), false));
    if let Some(key) = rename(&VAE_SIDE, rest, false) {
        return mapped(key);
    }
    if let Some(rest) = rest.strip_prefix("mid_block.") {
        if let Some(r) = rest.strip_prefix("resnets.0.") {
            return mapped(format!("mid.block_1.{}", rename(&VAE_RESNET, r, false)?));
        }
        if let Some(r) = rest.strip_prefix("resnets.1.") {
            return mapped(format!("mid.block_2.{}", rename(&VAE_RESNET, r, false)?));
        }
        let r = rest.strip_prefix("attentions.0.")?;
        let key = rename(&VAE_ATTENTION, r, false)?;
        let conv = r.ends_with(".weight") && !r.starts_with("group_norm.");
        return Some((format!("{side}.mid.attn_1.{key}"), conv));
    }
    let (blocks, rest) = rest.split_once('.')?;
    let (b, rest) = split_index(rest)?;
    let (kind, block, sampler) = match blocks {
        "down_blocks" => ("down", b, "downsamplers.0.conv."),
        "up_blocks" => ("up", ups.checked_sub(b + 1)?, "upsamplers.0.conv."),
        _ => return None,
    };
    if let Some(r) = rest.strip_prefix(sampler) {
        let s = if kind == "down" {
            "downsample"
        } else {
            "upsample"
        };
        return mapped(format!("{kind}.{block}.{s}.conv.{r}"));
    }
    let (j, r) = split_index(rest.strip_prefix("resnets.")?)?;
    mapped(format!(
        "{kind}.{block}.block.{j}.{}",
        rename(&VAE_RESNET, r, false)?
    ))
}

/// How a tensor changes on its way between the layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Bytes and shape unchanged.
    Same,
    /// `[C, C, 1, 1]` (original) <-> `[C, C]` (diffusers).
    Conv1x1,
    /// OpenCLIP's `text_projection` `[D, P]` (used as `x @ P`) <-> diffusers' linear weight
    /// `[P, D]`.
    Transpose,
}

/// An OpenCLIP name (after the part's prefix) -> diffusers. `None`: not a weight of the model
/// (e.g. `logit_scale`, or a residual block beyond the `layers` used).
pub(super) enum OpenClipName {
    One(String, Change),
    /// The fused `in_proj_{weight,bias}` of a layer: split into q, k, v.
    Fused {
        layer: usize,
        /// `weight` or `bias`.
        what: &'static str,
    },
}

pub(super) fn open_clip_to_diffusers(
    key: &str,
    layers: usize,
    projection: bool,
) -> Option<OpenClipName> {
    if key == "text_projection" {
        return projection
            .then(|| OpenClipName::One("text_projection.weight".to_owned(), Change::Transpose));
    }
    if let Some(name) = rename(&OPEN_CLIP_TOP, key, true) {
        return Some(OpenClipName::One(name, Change::Same));
    }
    let (n, rest) = split_index(key.strip_prefix("transformer.resblocks.")?)?;
    if n >= layers {
        return None;
    }
    for what in ["weight", "bias"] {
        if rest == format!("attn.in_proj_{what}") {
            return Some(OpenClipName::Fused { layer: n, what });
        }
    }
    let name = rename(&OPEN_CLIP_LAYER, rest, true)?;
    Some(OpenClipName::One(
        format!("text_model.encoder.layers.{n}.{name}"),
        Change::Same,
    ))
}

/// A CLIP text encoder name as transformers 4 saves it (`text_model.` in front, which
/// transformers 5 leaves out).
pub(super) fn with_text_model(name: &str) -> String {
    if name.starts_with("text_model.") || name.starts_with("text_projection") {
        name.to_owned()
    } else {
        format!("text_model.{name}")
    }
}

// Tensor byte manipulation (row-major, element size from the dtype).

pub(super) fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

pub(super) fn transpose(t: &Out) -> Option<Out> {
    let [rows, cols] = t.shape.as_slice() else {
        return None;
    };
    let (rows, cols) = (*rows, *cols);
    let es = element_size(t.dtype);
    let mut data = vec![0u8; t.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            let from = (r * cols + c) * es;
            let to = (c * rows + r) * es;
            data.get_mut(to..to + es)?
                .copy_from_slice(t.data.get(from..from + es)?);
        }
    }
    Some(Out {
        dtype: t.dtype,
        shape: vec![cols, rows],
        data,
    })
}

pub(super) fn apply(change: Change, t: Out, to_diffusers: bool) -> Option<Out> {
    match change {
        Change::Same => Some(t),
        Change::Transpose => transpose(&t),
        Change::Conv1x1 if to_diffusers => match t.shape.as_slice() {
            [o, i, 1, 1] => Some(Out {
                shape: vec![*o, *i],
                ..t
            }),
            // Some VAEs already store these as linear weights.
            [_, _] => Some(t),
            _ => None,
        },
        Change::Conv1x1 => match t.shape.as_slice() {
            [o, i] => Some(Out {
                shape: vec![*o, *i, 1, 1],
                ..t
            }),
            _ => None,
        },
    }
}

pub(super) fn copy_out(t: &crate::file::TensorData<'_>) -> Out {
    Out {
        dtype: t.dtype(),
        shape: t.shape().to_vec(),
        data: t.bytes().to_vec(),
    }
}
