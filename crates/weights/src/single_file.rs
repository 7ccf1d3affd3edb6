//! Single-file checkpoints: one `.safetensors` file in the original Stability AI / A1111 key
//! layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`,
//! `conditioner.embedders.*`), turned into the files of a diffusers pipeline folder, so the one
//! folder loader reads it.
//!
//! - [`read_single_file`] detects the architecture ([`Architecture`]: SD 1.x, SD 2.x, SDXL)
//!   from the tensors present, renames every tensor to its diffusers name (splitting OpenCLIP's
//!   fused `in_proj` into q/k/v, transposing its `text_projection`, flattening the VAE's 1x1
//!   attention convolutions to linear weights), and adds the published configs of that
//!   architecture (`builtin_configs/`, as diffusers' `from_single_file` fetches them) with every
//!   value the tensors' shapes determine read from them (channels, layer counts, context
//!   dimension, in_channels for inpainting, vocabulary...). A folder of diffusers configs
//!   ([`SingleFileOptions::config_dir`], diffusers' `config=`) replaces the built-in ones as they
//!   are: head counts and sample sizes cannot be read from shapes. The tokenizer is CLIP's
//!   (SD 2.x and SDXL's OpenCLIP pad with `!`, as their `tokenizer_config.json` says).
//! - [`write_single_file`] is the other direction (a diffusers folder into the original layout),
//!   with the same key tables, for tests and for people who need the original layout.
//! - [`check_extension`] refuses pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) by name:
//!   they are never opened, since unpickling can run arbitrary code.
//!
//! The key tables follow diffusers' `convert_from_ckpt.py` / `single_file_utils.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::Dtype;
use serde_json::{Value, json};

use crate::convert::{Out, serialize};
use crate::diffusers::{find_component_files, read_component_files};
use crate::error::{Result, WeightError};
use crate::file::SafetensorsFile;

pub use crate::tokenizer::CLIP_TOKENIZER_JSON;

/// File extensions of pickle checkpoints, which are refused.
pub const PICKLE_EXTENSIONS: [&str; 4] = ["ckpt", "pt", "pth", "bin"];

/// The UNet's key prefix in a single file.
const UNET_PREFIX: &str = "model.diffusion_model.";
/// The VAE's key prefix in a single file.
const VAE_PREFIX: &str = "first_stage_model.";

/// The model families a single file can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Stable Diffusion 1.x: CLIP ViT-L text encoder (`cond_stage_model.transformer.*`).
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (`cond_stage_model.model.*`).
    Sd2,
    /// SDXL: CLIP ViT-L plus OpenCLIP ViT-bigG (`conditioner.embedders.{0,1}.*`).
    Sdxl,
}

impl Architecture {
    /// A short name for messages (`SD 1.x`, `SD 2.x`, `SDXL`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD 1.x",
            Self::Sd2 => "SD 2.x",
            Self::Sdxl => "SDXL",
        }
    }

    /// The published configs of the architecture (SD 1.5, SD 2.1 768-v, SDXL base 1.0), by
    /// their path in a diffusers folder.
    pub fn builtin_configs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Sd1 => &SD15,
            Self::Sd2 => &SD21,
            Self::Sdxl => &SDXL,
        }
    }

    /// The text encoders: (diffusers component, key prefix in the single file, layout).
    fn text_parts(self) -> &'static [TextPart] {
        match self {
            Self::Sd1 => &[TextPart {
                component: "text_encoder",
                prefix: "cond_stage_model.transformer.",
                open_clip: false,
                projection: false,
            }],
            Self::Sd2 => &[TextPart {
                component: "text_encoder",
                prefix: "cond_stage_model.model.",
                open_clip: true,
                // SD 2.x's pipeline uses `CLIPTextModel`, which has no projection.
                projection: false,
            }],
            Self::Sdxl => &[
                TextPart {
                    component: "text_encoder",
                    prefix: "conditioner.embedders.0.transformer.",
                    open_clip: false,
                    projection: false,
                },
                TextPart {
                    component: "text_encoder_2",
                    prefix: "conditioner.embedders.1.model.",
                    open_clip: true,
                    projection: true,
                },
            ],
        }
    }
}

macro_rules! configs {
    ($dir:literal: $($file:literal),* $(,)?) => {
        [$(($file, include_str!(concat!("../builtin_configs/", $dir, "/", $file)))),*]
    };
}

const SD15: [(&str, &str); 6] = configs!("sd15":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "vae/config.json",
);

const SD21: [(&str, &str); 6] = configs!("sd21":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "vae/config.json",
);

const SDXL: [(&str, &str); 8] = configs!("sdxl":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer_config.json",
    "unet/config.json",
    "vae/config.json",
);

/// One text encoder of a single file.
#[derive(Clone, Copy, Debug)]
struct TextPart {
    /// `text_encoder` or `text_encoder_2`.
    component: &'static str,
    /// Its key prefix in the single file.
    prefix: &'static str,
    /// OpenCLIP's layout (fused attention, `resblocks`) rather than transformers' CLIP names.
    open_clip: bool,
    /// Whether diffusers' model keeps `text_projection` (`CLIPTextModelWithProjection`).
    projection: bool,
}

// ---------------------------------------------------------------------------------------------
// The key tables: (original fragment, diffusers fragment), read left to right when loading and
// right to left when writing.

/// UNet names outside the blocks.
const UNET_TOP: [(&str, &str); 7] = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("label_emb.0.0.", "add_embedding.linear_1."),
    ("label_emb.0.2.", "add_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
];

/// Inside a UNet ResNet block (`ResBlock` -> `ResnetBlock2D`).
const UNET_RESNET: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

/// Inside a VAE ResNet block.
const VAE_RESNET: [(&str, &str); 5] = [
    ("norm1.", "norm1."),
    ("conv1.", "conv1."),
    ("norm2.", "norm2."),
    ("conv2.", "conv2."),
    ("nin_shortcut.", "conv_shortcut."),
];

/// Inside the VAE's mid-block attention (`AttnBlock` -> `Attention`); q, k, v and proj_out are
/// 1x1 convolutions in the original, linear layers in diffusers.
const VAE_ATTENTION: [(&str, &str); 5] = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
];

/// The VAE's encoder/decoder names outside the numbered blocks (after `encoder.`/`decoder.`).
const VAE_SIDE: [(&str, &str); 3] = [
    ("conv_in.", "conv_in."),
    ("conv_out.", "conv_out."),
    ("norm_out.", "conv_norm_out."),
];

/// OpenCLIP's names outside the residual blocks.
const OPEN_CLIP_TOP: [(&str, &str); 3] = [
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
const OPEN_CLIP_LAYER: [(&str, &str); 5] = [
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
];

/// `(from, to)` of the first pair of `table` whose `from` (left when `forward`, else right) starts
/// `name`, with the rest appended to `to`.
fn rename(table: &[(&str, &str)], name: &str, forward: bool) -> Option<String> {
    table.iter().find_map(|&(o, d)| {
        let (from, to) = if forward { (o, d) } else { (d, o) };
        name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
    })
}

/// `"12.rest"` -> `(12, "rest")`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// The UNet's block structure, which the flat original numbering depends on.
#[derive(Clone, Debug)]
struct UNetLayout {
    /// `layers_per_block` (ResNets per down block; up blocks have one more).
    layers: usize,
    /// Up blocks that have attentions (their upsampler moves from sub-index 1 to 2).
    up_with_attention: BTreeSet<usize>,
}

/// A UNet name, original (without `model.diffusion_model.`) -> diffusers.
fn unet_to_diffusers(key: &str, layers: usize) -> Option<String> {
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
fn unet_to_original(name: &str, layout: &UNetLayout) -> Option<String> {
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
fn vae_to_diffusers(key: &str, ups: usize) -> Option<(String, bool)> {
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
fn vae_to_original(name: &str, ups: usize) -> Option<(String, bool)> {
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
enum Change {
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
enum OpenClipName {
    One(String, Change),
    /// The fused `in_proj_{weight,bias}` of a layer: split into q, k, v.
    Fused {
        layer: usize,
        /// `weight` or `bias`.
        what: &'static str,
    },
}

fn open_clip_to_diffusers(key: &str, layers: usize, projection: bool) -> Option<OpenClipName> {
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
fn with_text_model(name: &str) -> String {
    if name.starts_with("text_model.") || name.starts_with("text_projection") {
        name.to_owned()
    } else {
        format!("text_model.{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor byte manipulation (row-major, element size from the dtype).

fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

fn transpose(t: &Out) -> Option<Out> {
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

fn apply(change: Change, t: Out, to_diffusers: bool) -> Option<Out> {
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

fn copy_out(t: &crate::file::TensorData<'_>) -> Out {
    Out {
        dtype: t.dtype(),
        shape: t.shape().to_vec(),
        data: t.bytes().to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
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
fn count_indexed<'a>(names: impl Iterator<Item = &'a str>, prefix: &str) -> usize {
    names
        .filter_map(|n| split_index(n.strip_prefix(prefix)?).map(|(i, _)| i + 1))
        .max()
        .unwrap_or(0)
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
fn read_config_dir(dir: &Path) -> Result<BTreeMap<String, String>> {
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

/// Shape lookups over a component's tensors.
type Shapes<'a> = BTreeMap<&'a str, &'a [usize]>;

fn dim(shapes: &Shapes<'_>, name: &str, i: usize) -> Option<usize> {
    shapes.get(name).and_then(|s| s.get(i)).copied()
}

fn count(shapes: &Shapes<'_>, prefix: &str) -> usize {
    count_indexed(shapes.keys().copied(), prefix)
}

fn has_prefix(shapes: &Shapes<'_>, prefix: &str) -> bool {
    shapes.keys().any(|n| n.starts_with(prefix))
}

/// The UNet config values the tensors determine.
fn unet_patch(s: &Shapes<'_>, pooled: Option<usize>) -> Value {
    let blocks = count(s, "down_blocks.");
    let mut patch = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        patch.insert(k.to_owned(), v);
    };
    if let Some(n) = dim(s, "conv_in.weight", 1) {
        put("in_channels", json!(n));
    }
    if let Some(n) = dim(s, "conv_out.weight", 0) {
        put("out_channels", json!(n));
    }
    let channels: Vec<usize> = (0..blocks)
        .filter_map(|b| dim(s, &format!("down_blocks.{b}.resnets.0.conv1.weight"), 0))
        .collect();
    if channels.len() == blocks && blocks > 0 {
        put("block_out_channels", json!(channels));
    }
    put(
        "layers_per_block",
        json!(count(s, "down_blocks.0.resnets.")),
    );
    let attn = |side: &str, b: usize| has_prefix(s, &format!("{side}.{b}.attentions."));
    put(
        "down_block_types",
        json!(
            (0..blocks)
                .map(|b| if attn("down_blocks", b) {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                })
                .collect::<Vec<_>>()
        ),
    );
    let ups = count(s, "up_blocks.");
    put(
        "up_block_types",
        json!(
            (0..ups)
                .map(|b| if attn("up_blocks", b) {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                })
                .collect::<Vec<_>>()
        ),
    );
    let first_attention = s
        .keys()
        .find(|n| n.ends_with("attn2.to_k.weight"))
        .and_then(|n| s.get(n));
    if let Some(shape) = first_attention {
        put("cross_attention_dim", json!(shape.get(1)));
    }
    if let Some(shape) = s
        .iter()
        .find(|(n, _)| n.ends_with("proj_in.weight"))
        .map(|(_, v)| v)
    {
        put("use_linear_projection", json!(shape.len() == 2));
    }
    let depths: Vec<usize> = (0..blocks)
        .map(|b| {
            count(
                s,
                &format!("down_blocks.{b}.attentions.0.transformer_blocks."),
            )
            .max(1)
        })
        .collect();
    if depths.iter().all(|&d| d == 1) {
        put("transformer_layers_per_block", json!(1));
    } else {
        put("transformer_layers_per_block", json!(depths));
    }
    match dim(s, "add_embedding.linear_1.weight", 1) {
        Some(input) => {
            put("addition_embed_type", json!("text_time"));
            put("projection_class_embeddings_input_dim", json!(input));
            // The input is the pooled text embedding and 6 sinusoidal time-id embeddings.
            if let Some(p) = pooled.filter(|&p| input > p && (input - p) % 6 == 0) {
                put("addition_time_embed_dim", json!((input - p) / 6));
            }
        }
        None => put("addition_embed_type", Value::Null),
    }
    Value::Object(patch)
}

/// The VAE config values the tensors determine.
fn vae_patch(s: &Shapes<'_>) -> Value {
    let blocks = count(s, "encoder.down_blocks.");
    let mut patch = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        patch.insert(k.to_owned(), v);
    };
    if let Some(n) = dim(s, "encoder.conv_in.weight", 1) {
        put("in_channels", json!(n));
    }
    if let Some(n) = dim(s, "decoder.conv_out.weight", 0) {
        put("out_channels", json!(n));
    }
    if let Some(n) = dim(s, "decoder.conv_in.weight", 1) {
        put("latent_channels", json!(n));
    }
    let channels: Vec<usize> = (0..blocks)
        .filter_map(|b| {
            dim(
                s,
                &format!("encoder.down_blocks.{b}.resnets.0.conv1.weight"),
                0,
            )
        })
        .collect();
    if channels.len() == blocks && blocks > 0 {
        put("block_out_channels", json!(channels));
    }
    put(
        "layers_per_block",
        json!(count(s, "encoder.down_blocks.0.resnets.")),
    );
    put(
        "down_block_types",
        json!(vec!["DownEncoderBlock2D"; blocks]),
    );
    put("up_block_types", json!(vec!["UpDecoderBlock2D"; blocks]));
    Value::Object(patch)
}

/// The text encoder config values the tensors determine.
fn text_patch(s: &Shapes<'_>) -> Value {
    let mut patch = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        patch.insert(k.to_owned(), v);
    };
    let token = "text_model.embeddings.token_embedding.weight";
    if let (Some(vocab), Some(hidden)) = (dim(s, token, 0), dim(s, token, 1)) {
        put("vocab_size", json!(vocab));
        put("hidden_size", json!(hidden));
        // CLIP ViT-L, OpenCLIP ViT-H and bigG all use 64-wide heads.
        if hidden % 64 == 0 {
            put("num_attention_heads", json!(hidden / 64));
        }
    }
    if let Some(n) = dim(s, "text_model.embeddings.position_embedding.weight", 0) {
        put("max_position_embeddings", json!(n));
    }
    if let Some(n) = dim(s, "text_model.encoder.layers.0.mlp.fc1.weight", 0) {
        put("intermediate_size", json!(n));
    }
    put(
        "num_hidden_layers",
        json!(count(s, "text_model.encoder.layers.")),
    );
    if let Some(n) = dim(s, "text_projection.weight", 0) {
        put("projection_dim", json!(n));
    }
    Value::Object(patch)
}

// ---------------------------------------------------------------------------------------------
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Spot checks against diffusers' tables (`convert_ldm_unet_checkpoint` /
    /// `convert_ldm_vae_checkpoint` / `convert_open_clip_checkpoint`) at SD 1.5 / SDXL sizes,
    /// in both directions.
    #[test]
    fn published_names() {
        let sd15 = UNetLayout {
            layers: 2,
            up_with_attention: [1, 2, 3].into(),
        };
        let unet = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.bias",
                "down_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "input_blocks.11.0.out_layers.3.weight",
                "down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "middle_block.2.emb_layers.1.bias",
                "mid_block.resnets.1.time_emb_proj.bias",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.11.0.in_layers.2.weight",
                "up_blocks.3.resnets.2.conv1.weight",
            ),
            ("out.2.bias", "conv_out.bias"),
        ];
        for (original, diffusers) in unet {
            assert_eq!(
                unet_to_diffusers(original, 2).as_deref(),
                Some(diffusers),
                "{original}"
            );
            assert_eq!(
                unet_to_original(diffusers, &sd15).as_deref(),
                Some(original),
                "{diffusers}"
            );
        }
        let sdxl = UNetLayout {
            layers: 2,
            up_with_attention: [0, 1].into(),
        };
        assert_eq!(
            unet_to_original("up_blocks.2.resnets.2.conv1.weight", &sdxl).as_deref(),
            Some("output_blocks.8.0.in_layers.2.weight")
        );
        assert_eq!(
            unet_to_original("label_emb.0.2.weight", &sdxl),
            None,
            "original names are not diffusers names"
        );
        assert_eq!(
            unet_to_diffusers("label_emb.0.2.weight", 2).as_deref(),
            Some("add_embedding.linear_2.weight")
        );
        let vae = [
            (
                "encoder.down.0.block.1.nin_shortcut.weight",
                "encoder.down_blocks.0.resnets.1.conv_shortcut.weight",
                false,
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
                false,
            ),
            (
                "decoder.up.3.block.0.norm1.weight",
                "decoder.up_blocks.0.resnets.0.norm1.weight",
                false,
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
                false,
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
                true,
            ),
            (
                "decoder.mid.attn_1.q.bias",
                "decoder.mid_block.attentions.0.to_q.bias",
                false,
            ),
            (
                "encoder.mid.attn_1.norm.weight",
                "encoder.mid_block.attentions.0.group_norm.weight",
                false,
            ),
            (
                "encoder.mid.block_2.conv1.weight",
                "encoder.mid_block.resnets.1.conv1.weight",
                false,
            ),
            ("decoder.norm_out.bias", "decoder.conv_norm_out.bias", false),
            ("post_quant_conv.weight", "post_quant_conv.weight", false),
        ];
        for (original, diffusers, conv) in vae {
            assert_eq!(
                vae_to_diffusers(original, 4),
                Some((diffusers.to_owned(), conv)),
                "{original}"
            );
            assert_eq!(
                vae_to_original(diffusers, 4),
                Some((original.to_owned(), conv)),
                "{diffusers}"
            );
        }
        let Some(OpenClipName::One(name, Change::Same)) =
            open_clip_to_diffusers("transformer.resblocks.22.mlp.c_fc.weight", 23, false)
        else {
            panic!("resblock 22 is a layer of SD 2.x's text encoder");
        };
        assert_eq!(name, "text_model.encoder.layers.22.mlp.fc1.weight");
        assert!(
            open_clip_to_diffusers("transformer.resblocks.23.mlp.c_fc.weight", 23, false).is_none(),
            "SD 2.x's last block is unused"
        );
        assert!(matches!(
            open_clip_to_diffusers("transformer.resblocks.3.attn.in_proj_bias", 32, true),
            Some(OpenClipName::Fused {
                layer: 3,
                what: "bias"
            })
        ));
        assert!(matches!(
            open_clip_to_diffusers("text_projection", 32, true),
            Some(OpenClipName::One(_, Change::Transpose))
        ));
        assert!(open_clip_to_diffusers("text_projection", 23, false).is_none());
    }

    #[test]
    fn transpose_round_trips() {
        let t = Out {
            dtype: Dtype::F16,
            shape: vec![2, 3],
            data: (0u8..12).collect(),
        };
        let tt = transpose(&t).expect("2-D");
        assert_eq!(tt.shape, [3, 2]);
        // Element (0, 1) (bytes 2, 3) is now element (1, 0) (bytes 4, 5).
        assert_eq!(&tt.data[4..6], &[2, 3]);
        assert_eq!(transpose(&tt).expect("2-D").data, t.data);
    }

    #[test]
    fn pickles_are_refused_by_name() {
        for name in ["model.ckpt", "a.PT", "b.pth", "pytorch_model.bin"] {
            let err = check_extension(Path::new(name)).expect_err(name);
            assert!(matches!(err, WeightError::Pickle { .. }), "{name}");
            assert!(
                err.to_string().contains("never") || err.to_string().contains("arbitrary code")
            );
        }
        assert!(check_extension(Path::new("x.safetensors")).is_ok());
        assert!(matches!(
            check_extension(Path::new("x.gguf")),
            Err(WeightError::SingleFile { .. })
        ));
    }
}
