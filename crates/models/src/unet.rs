//! diffusers' `UNet2DConditionModel` (`models/unets/unet_2d_condition.py`) with the blocks of
//! `unet_2d_blocks.py` that SD 1.x and 2.x use: `CrossAttnDownBlock2D`, `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `UpBlock2D`, `CrossAttnUpBlock2D`; with the extra time
//! conditioning of LCM-distilled models (`time_cond_proj_dim`: the guidance "w" embedding) and of
//! SDXL (`addition_embed_type: text_time`: pooled text embeds and the size/crop time ids).

use sd_core::config::UNet2DConditionConfig;
use sd_kernels::ops::{self, Activation, Conv2dShape};
use sd_kernels::{Batch, DType, Tensor};

use crate::layers::{self, Conv2d, GroupNorm, Linear, Params};
use crate::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::transformer::Transformer2DModel;
use crate::{ModelError, Result};

/// A down block: ResNets, each followed by a transformer in cross-attention blocks, then an
/// optional downsampler.
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

/// `UNetMidBlock2DCrossAttn`: ResNet, transformer, ResNet.
#[derive(Debug)]
struct MidBlock {
    resnet_0: ResnetBlock2D,
    attention: Transformer2DModel,
    resnet_1: ResnetBlock2D,
}

/// An up block: ResNets over the skip-concatenated input, transformers, optional upsampler.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

/// SDXL's `text_time` addition embedding: `add_time_proj` (sinusoids of each time id) then
/// `add_embedding`, an MLP over `[pooled text embeds, time id sinusoids]`.
#[derive(Debug)]
struct TextTimeEmbedding {
    /// Sinusoid width per time id (`addition_time_embed_dim`).
    time_dim: usize,
    linear_1: Linear,
    linear_2: Linear,
}

/// What a UNet call is conditioned on besides the timestep and the text hidden states; which
/// fields a model needs follows from its config.
#[derive(Debug, Default, Clone, Copy)]
pub struct UNetConditioning<'a> {
    /// `timestep_cond` `[B, time_cond_proj_dim]`: the guidance embedding of LCM-distilled
    /// models (`time_cond_proj_dim` set).
    pub timestep_cond: Option<&'a Tensor>,
    /// `added_cond_kwargs["text_embeds"]` `[B, pooled]`: the second text encoder's pooled,
    /// projected output (SDXL, `addition_embed_type: text_time`).
    pub text_embeds: Option<&'a Tensor>,
    /// `added_cond_kwargs["time_ids"]` `[B, 6]`: original size, crop top-left, target size
    /// (SDXL).
    pub time_ids: Option<&'a Tensor>,
}

/// The denoising UNet.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNet2DConditionConfig,
    /// `time_embedding.cond_proj` (LCM): the guidance embedding, added to the timestep's.
    time_cond_proj: Option<Linear>,
    time_linear_1: Linear,
    time_linear_2: Linear,
    text_time: Option<TextTimeEmbedding>,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

fn unsupported(what: String) -> ModelError {
    ModelError::Unsupported { part: "unet", what }
}

impl UNet2DConditionModel {
    /// Builds the UNet from its config, loading every weight by its diffusers name.
    pub fn load(config: &UNet2DConditionConfig, p: &Params<'_>) -> Result<Self> {
        let c = config;
        if c.class_embed_type.is_some() || c.num_class_embeds.is_some() {
            return Err(unsupported("class embeddings".into()));
        }
        if let Some(kind) = c.addition_embed_type.as_deref()
            && kind != "text_time"
        {
            return Err(unsupported(format!("addition_embed_type {kind:?}")));
        }
        if c.time_embedding_act_fn.is_some() || c.timestep_post_act.is_some() {
            return Err(unsupported(
                "time_embedding_act_fn / timestep_post_act".into(),
            ));
        }
        if c.resnet_time_scale_shift != "default" || c.time_embedding_type != "positional" {
            return Err(unsupported(format!(
                "resnet_time_scale_shift {:?} / time_embedding_type {:?}",
                c.resnet_time_scale_shift, c.time_embedding_type
            )));
        }
        let groups = c.norm_num_groups.unwrap_or(32);
        let eps = c.norm_eps;
        let channels = &c.block_out_channels;
        let blocks = channels.len();
        let heads = c.heads_per_block();
        let depths = c.transformer_depth_per_block();
        let layers = c.layers_per_block();
        let context = c.cross_attention_dim_per_block();
        let temb = c.time_embed_dim();
        let first = *channels
            .first()
            .ok_or_else(|| unsupported("no blocks".into()))?;

        let mut down_blocks = Vec::with_capacity(blocks);
        let mut out_ch = first;
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let cross = match kind.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(unsupported(format!("down block type {other}"))),
            };
            let in_ch = out_ch;
            out_ch = channels[i];
            let bp = p.scope("down_blocks").at(i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers[i] {
                let from = if j == 0 { in_ch } else { out_ch };
                resnets.push(ResnetBlock2D::load(
                    &bp.scope("resnets").at(j),
                    from,
                    out_ch,
                    Some(temb),
                    groups,
                    eps,
                    1.0,
                )?);
                if cross {
                    attentions.push(Transformer2DModel::load(
                        &bp.scope("attentions").at(j),
                        out_ch,
                        heads[i],
                        depths[i],
                        context[i],
                        groups,
                        c.use_linear_projection,
                    )?);
                }
            }
            let downsampler = (i + 1 < blocks)
                .then(|| {
                    let shape = Conv2dShape::symmetric(2, c.downsample_padding);
                    Downsample2D::load(&bp.scope("downsamplers").at(0), out_ch, shape)
                })
                .transpose()?;
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let mid_type = c
            .mid_block_type
            .as_deref()
            .unwrap_or("UNetMidBlock2DCrossAttn");
        if mid_type != "UNetMidBlock2DCrossAttn" {
            return Err(unsupported(format!("mid block type {mid_type}")));
        }
        let last = blocks - 1;
        let mid_ch = channels[last];
        let mp = p.scope("mid_block");
        let mid_scale = c.mid_block_scale_factor;
        let mid_block = MidBlock {
            resnet_0: ResnetBlock2D::load(
                &mp.scope("resnets").at(0),
                mid_ch,
                mid_ch,
                Some(temb),
                groups,
                eps,
                mid_scale,
            )?,
            attention: Transformer2DModel::load(
                &mp.scope("attentions").at(0),
                mid_ch,
                heads[last],
                depths[last],
                context[last],
                groups,
                c.use_linear_projection,
            )?,
            resnet_1: ResnetBlock2D::load(
                &mp.scope("resnets").at(1),
                mid_ch,
                mid_ch,
                Some(temb),
                groups,
                eps,
                mid_scale,
            )?,
        };

        let up_depths = c.up_transformer_depths();
        let mut up_blocks = Vec::with_capacity(blocks);
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut out_ch = reversed[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let cross = match kind.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => return Err(unsupported(format!("up block type {other}"))),
            };
            let down_index = last - i;
            let prev_out = out_ch;
            out_ch = reversed[i];
            let in_ch = reversed[(i + 1).min(last)];
            let n_layers = layers[down_index] + 1;
            let bp = p.scope("up_blocks").at(i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..n_layers {
                let skip = if j + 1 == n_layers { in_ch } else { out_ch };
                let from = if j == 0 { prev_out } else { out_ch };
                resnets.push(ResnetBlock2D::load(
                    &bp.scope("resnets").at(j),
                    from + skip,
                    out_ch,
                    Some(temb),
                    groups,
                    eps,
                    1.0,
                )?);
                if cross {
                    let depth = up_depths
                        .get(i)
                        .and_then(|d| d.get(j))
                        .copied()
                        .unwrap_or(depths[down_index]);
                    attentions.push(Transformer2DModel::load(
                        &bp.scope("attentions").at(j),
                        out_ch,
                        heads[down_index],
                        depth,
                        context[down_index],
                        groups,
                        c.use_linear_projection,
                    )?);
                }
            }
            let upsampler = (i < last)
                .then(|| Upsample2D::load(&bp.scope("upsamplers").at(0), out_ch))
                .transpose()?;
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        let time_cond_proj = c
            .time_cond_proj_dim
            .map(|dim| Linear::load(p, "time_embedding.cond_proj", dim, first, false))
            .transpose()?;
        let text_time = match c.addition_embed_type.as_deref() {
            Some(_) => {
                let (Some(input), Some(time_dim)) = (
                    c.projection_class_embeddings_input_dim,
                    c.addition_time_embed_dim,
                ) else {
                    return Err(unsupported(
                        "text_time without projection_class_embeddings_input_dim and \
                         addition_time_embed_dim"
                            .into(),
                    ));
                };
                Some(TextTimeEmbedding {
                    time_dim,
                    linear_1: Linear::load(p, "add_embedding.linear_1", input, temb, true)?,
                    linear_2: Linear::load(p, "add_embedding.linear_2", temb, temb, true)?,
                })
            }
            None => None,
        };
        Ok(Self {
            config: c.clone(),
            time_cond_proj,
            time_linear_1: Linear::load(p, "time_embedding.linear_1", first, temb, true)?,
            time_linear_2: Linear::load(p, "time_embedding.linear_2", temb, temb, true)?,
            text_time,
            conv_in: Conv2d::load(
                p,
                "conv_in",
                c.in_channels,
                first,
                c.conv_in_kernel,
                Conv2dShape::symmetric(1, c.conv_in_kernel / 2),
            )?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(p, "conv_norm_out", first, groups, eps)?,
            conv_out: Conv2d::load(
                p,
                "conv_out",
                first,
                c.out_channels,
                c.conv_out_kernel,
                Conv2dShape::symmetric(1, c.conv_out_kernel / 2),
            )?,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Records one UNet call: `sample` `[B, in, h, w]`, `timesteps` `[B]` (f32), `context`
    /// `[B, L, D]` (text hidden states), and the extra conditioning the config asks for;
    /// returns the prediction `[B, out, h, w]`.
    pub fn forward(
        &self,
        batch: &mut Batch<'_>,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        cond: &UNetConditioning<'_>,
    ) -> Result<Tensor> {
        let ctx = batch.context();
        let [b, ..] = *sample.shape() else {
            return Err(ModelError::Shape(format!(
                "sample must be NCHW, is {:?}",
                sample.shape()
            )));
        };
        let first = self.config.block_out_channels[0];
        let t_emb = ctx.empty(&[b, first], DType::F32)?;
        ops::timestep_embedding(
            batch,
            timesteps,
            &t_emb,
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f32,
        )?;
        if let Some(cond_proj) = &self.time_cond_proj {
            let w = cond
                .timestep_cond
                .ok_or_else(|| missing("timestep_cond", "LCM"))?;
            let projected = cond_proj.forward(batch, w)?;
            ops::residual_add(batch, &projected, &t_emb, 1.0)?;
        }
        let h = self.time_linear_1.forward(batch, &t_emb)?;
        let h = layers::activation(batch, Activation::Silu, &h)?;
        let emb = self.time_linear_2.forward(batch, &h)?;
        if let Some(text_time) = &self.text_time {
            let aug = text_time.forward(batch, b, cond, &self.config)?;
            ops::residual_add(batch, &aug, &emb, 1.0)?;
        }
        // Every ResNet applies SiLU to the embedding first: do it once.
        let emb_silu = layers::activation(batch, Activation::Silu, &emb)?;

        let mut h = self.conv_in.forward(batch, sample)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward(batch, &h, Some(&emb_silu))?;
                if let Some(attention) = block.attentions.get(j) {
                    h = attention.forward(batch, &h, context)?;
                }
                skips.push(h.clone());
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(batch, &h)?;
                skips.push(h.clone());
            }
        }

        h = self
            .mid_block
            .resnet_0
            .forward(batch, &h, Some(&emb_silu))?;
        h = self.mid_block.attention.forward(batch, &h, context)?;
        h = self
            .mid_block
            .resnet_1
            .forward(batch, &h, Some(&emb_silu))?;

        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| ModelError::Shape("UNet skip connections ran out".into()))?;
                let [n, ch, hh, ww] = *h.shape() else {
                    return Err(ModelError::Shape(format!(
                        "UNet hidden state must be NCHW, is {:?}",
                        h.shape()
                    )));
                };
                let cat = ctx.empty(&[n, ch + skip.shape()[1], hh, ww], DType::F32)?;
                ops::concat_channels(batch, &h, &skip, &cat)?;
                h = resnet.forward(batch, &cat, Some(&emb_silu))?;
                if let Some(attention) = block.attentions.get(j) {
                    h = attention.forward(batch, &h, context)?;
                }
            }
            if let Some(up) = &block.upsampler {
                // Upsample to the size of the next skip connection (2x unless it is odd-sized).
                let size = skips.last().map(|s| (s.shape()[2], s.shape()[3]));
                h = up.forward(batch, &h, size)?;
            }
        }
        let h = self.conv_norm_out.forward(batch, &h, true)?;
        self.conv_out.forward(batch, &h)
    }
}

/// A conditioning input the model's config asks for was not given.
fn missing(what: &str, model: &str) -> ModelError {
    ModelError::Shape(format!(
        "this {model} UNet needs `{what}`, which was not given"
    ))
}

impl TextTimeEmbedding {
    /// `add_embedding(cat([text_embeds, add_time_proj(time_ids).reshape(B, -1)], -1))`.
    fn forward(
        &self,
        batch: &mut Batch<'_>,
        b: usize,
        cond: &UNetConditioning<'_>,
        config: &UNet2DConditionConfig,
    ) -> Result<Tensor> {
        let ctx = batch.context();
        let text_embeds = cond
            .text_embeds
            .ok_or_else(|| missing("text_embeds", "SDXL"))?;
        let time_ids = cond.time_ids.ok_or_else(|| missing("time_ids", "SDXL"))?;
        let ids = time_ids.len();
        if ids % b != 0 || text_embeds.shape().first() != Some(&b) {
            return Err(ModelError::Shape(format!(
                "text_embeds {:?} and time_ids {:?} must have {b} rows",
                text_embeds.shape(),
                time_ids.shape()
            )));
        }
        let flat_ids = time_ids.reshape(&[ids])?;
        let time_embeds = ctx.empty(&[ids, self.time_dim], DType::F32)?;
        ops::timestep_embedding(
            batch,
            &flat_ids,
            &time_embeds,
            config.flip_sin_to_cos,
            config.freq_shift as f32,
        )?;
        let time_embeds = time_embeds.reshape(&[b, ids / b * self.time_dim])?;
        let pooled = text_embeds.len() / b;
        let text_embeds = text_embeds.reshape(&[b, pooled])?;
        let add_embeds = ctx.empty(&[b, pooled + ids / b * self.time_dim], DType::F32)?;
        ops::concat_channels(batch, &text_embeds, &time_embeds, &add_embeds)?;
        let h = self.linear_1.forward(batch, &add_embeds)?;
        let h = layers::activation(batch, Activation::Silu, &h)?;
        self.linear_2.forward(batch, &h)
    }
}
