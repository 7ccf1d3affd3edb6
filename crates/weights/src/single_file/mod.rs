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

mod configs;
mod detect;
mod keys;
mod read;
mod write;

use configs::*;
pub use detect::*;
use keys::*;
pub use read::*;
pub use write::*;

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

#[derive(Clone, Copy, Debug)]
pub(super) struct TextPart {
    /// `text_encoder` or `text_encoder_2`.
    pub(super) component: &'static str,
    /// Its key prefix in the single file.
    pub(super) prefix: &'static str,
    /// OpenCLIP's layout (fused attention, `resblocks`) rather than transformers' CLIP names.
    pub(super) open_clip: bool,
    /// Whether diffusers' model keeps `text_projection` (`CLIPTextModelWithProjection`).
    pub(super) projection: bool,
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
