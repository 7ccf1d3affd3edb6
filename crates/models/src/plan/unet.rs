//! The walk of one `UNet2DConditionModel` forward pass (one denoising step), after diffusers'
//! `models/unets/unet_2d_condition.py`, `models/unets/unet_2d_blocks.py`
//! (`CrossAttnDownBlock2D`, `DownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D`,
//! `CrossAttnUpBlock2D`), `models/transformers/transformer_2d.py` (`Transformer2DModel`) and
//! `models/attention.py` (`BasicTransformerBlock`).

use sd_core::config::UNet2DConditionConfig;

use super::graph::{Activation, Graph, OpKind, Padding, Shape, TensorId, read, update, write};
use super::layers::{
    AttentionSpec, ResnetSpec, activation, attention, concat_channels, conv2d, downsample_2d,
    feed_forward, group_norm, layer_norm, linear, residual_add, resnet_block_2d, to_nchw,
    to_tokens, upsample_2d,
};
use super::{DeviceLimits, Part, PartPlan, PlanError};

/// Epsilon of `Transformer2DModel`'s group norm (fixed in diffusers).
const TRANSFORMER_NORM_EPS: f64 = 1e-6;
/// Epsilon of `BasicTransformerBlock`'s layer norms (diffusers' default `norm_eps`).
const TRANSFORMER_LAYER_NORM_EPS: f64 = 1e-5;

/// The inputs of one UNet call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetInputs {
    /// Batch size of the call: 2 per image with classifier-free guidance (the unconditional
    /// and the conditional prediction), 1 without.
    pub batch: usize,
    /// Latent height (image height / 8).
    pub height: usize,
    /// Latent width (image width / 8).
    pub width: usize,
    /// Tokens of the text encoder's hidden states (77).
    pub text_len: usize,
}

/// What the UNet's blocks share.
struct Ctx<'a> {
    config: &'a UNet2DConditionConfig,
    groups: usize,
    /// The text encoder's hidden states, `[batch, text_len, cross_attention_dim]`.
    context: TensorId,
    /// `silu(temb)`, `[batch, 1, time_embed_dim]`.
    temb: TensorId,
}

/// How one block's attentions are configured.
#[derive(Debug, Clone, Copy)]
struct AttnBlock {
    heads: usize,
    only_cross_attention: bool,
}

/// One down or up block.
#[derive(Debug, Clone, Copy)]
struct BlockSpec<'a> {
    /// Output channels of every ResNet.
    out_channels: usize,
    /// ResNets.
    layers: usize,
    /// For cross-attention blocks: the attention settings and one transformer depth per layer.
    attn: Option<(AttnBlock, &'a [usize])>,
    /// Whether the block ends with a downsampler (down) or upsampler (up).
    resample: bool,
}

/// Plans one UNet call.
///
/// # Errors
///
/// [`PlanError::Unsupported`] for UNet features SD pipelines do not use (class embeddings,
/// dual cross-attention, `scale_shift` ResNets, ...), [`PlanError::Architecture`] for
/// inconsistent shapes, [`PlanError::Limit`] for a buffer that does not fit.
pub fn plan_unet(
    config: &UNet2DConditionConfig,
    inputs: &UNetInputs,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    check_supported(config)?;
    let groups = config.norm_num_groups.unwrap_or(0);
    let mut g = Graph::new(Part::UNet, *limits, groups);
    let n = inputs.batch;
    let cross = config.cross_attention_dim_per_block();
    let cross_dim = cross.first().copied().unwrap_or(0);
    let boc = &config.block_out_channels;
    let c0 = boc.first().copied().unwrap_or(0);

    // Inputs.
    let sample = g.nchw("sample", n, config.in_channels, inputs.height, inputs.width)?;
    let timesteps = g.tensor("timestep", Shape::Flat { len: n })?;
    let context = g.tokens("encoder_hidden_states", n, inputs.text_len, cross_dim)?;
    let mut input_args = vec![
        write("sample", sample),
        write("timestep", timesteps),
        write("encoder_hidden_states", context),
    ];
    let timestep_cond = match config.time_cond_proj_dim {
        Some(dim) => {
            let t = g.tokens("timestep_cond", n, 1, dim)?;
            input_args.push(write("timestep_cond", t));
            Some(t)
        }
        None => None,
    };
    let text_time = match config.addition_embed_type.as_deref() {
        Some("text_time") => {
            let (pooled, time_ids) = text_time_dims(config)?;
            let text_embeds = g.tokens("text_embeds", n, 1, pooled)?;
            let ids = g.tensor("time_ids", Shape::Flat { len: n * time_ids })?;
            input_args.push(write("text_embeds", text_embeds));
            input_args.push(write("time_ids", ids));
            Some((text_embeds, ids))
        }
        _ => None,
    };
    g.op("inputs", OpKind::Input, input_args)?;

    let temb = time_embedding(&mut g, config, n, timesteps, timestep_cond, text_time)?;
    let ctx = Ctx {
        config,
        groups,
        context,
        temb,
    };

    // conv_in
    let pad_in = config.conv_in_kernel / 2;
    let mut x = conv2d(
        &mut g,
        "conv_in",
        sample,
        c0,
        config.conv_in_kernel,
        1,
        Padding::same(pad_in),
    )?;

    // Down blocks: every ResNet/attention output and every downsampler output is a skip.
    let heads = config.heads_per_block();
    let depths = config.transformer_depth_per_block();
    let layers = config.layers_per_block();
    let only_cross = config.only_cross_attention_per_block();
    let mut skips = vec![x];
    for (i, block_type) in config.down_block_types.iter().enumerate() {
        let path = format!("down_blocks.{i}");
        let out_channels = boc[i];
        let add_downsample = i + 1 < boc.len();
        let attn = AttnBlock {
            heads: heads[i],
            only_cross_attention: only_cross[i],
        };
        let attn_depths = vec![depths[i]; layers[i]];
        let spec = BlockSpec {
            out_channels,
            layers: layers[i],
            attn: Some((attn, &attn_depths)),
            resample: add_downsample,
        };
        x = if block_type == "CrossAttnDownBlock2D" {
            cross_attn_down_block_2d(&mut g, &ctx, &path, x, &spec, &mut skips)?
        } else {
            down_block_2d(&mut g, &ctx, &path, x, &spec, &mut skips)?
        };
    }

    // Mid block.
    if config.mid_block_type.is_some() {
        let last = boc.len() - 1;
        let attn = AttnBlock {
            heads: heads[last],
            only_cross_attention: false,
        };
        x = unet_mid_block_2d_cross_attn(&mut g, &ctx, "mid_block", x, attn, depths[last])?;
    }

    // Up blocks, lowest resolution first; each takes `layers + 1` skips.
    let up_depths = config.up_transformer_depths();
    let reversed_channels: Vec<usize> = boc.iter().rev().copied().collect();
    let reversed_heads: Vec<usize> = heads.iter().rev().copied().collect();
    let reversed_layers: Vec<usize> = layers.iter().rev().copied().collect();
    let reversed_only_cross: Vec<bool> = only_cross.iter().rev().copied().collect();
    for (i, block_type) in config.up_block_types.iter().enumerate() {
        let path = format!("up_blocks.{i}");
        let resnets = reversed_layers[i] + 1;
        let add_upsample = i + 1 < boc.len();
        let attn = AttnBlock {
            heads: reversed_heads[i],
            only_cross_attention: reversed_only_cross[i],
        };
        let attn_depths = up_depths.get(i).cloned().unwrap_or_default();
        let spec = BlockSpec {
            out_channels: reversed_channels[i],
            layers: resnets,
            attn: Some((attn, &attn_depths)),
            resample: add_upsample,
        };
        x = if block_type == "CrossAttnUpBlock2D" {
            if attn_depths.len() != resnets {
                return Err(PlanError::Architecture {
                    part: "unet",
                    message: format!(
                        "{path} has {resnets} layers but {} transformer depths",
                        attn_depths.len()
                    ),
                });
            }
            cross_attn_up_block_2d(&mut g, &ctx, &path, x, &spec, &mut skips)?
        } else {
            up_block_2d(&mut g, &ctx, &path, x, &spec, &mut skips)?
        };
    }
    if !skips.is_empty() {
        return Err(PlanError::Architecture {
            part: "unet",
            message: format!(
                "{} skip connections are left over after the up blocks",
                skips.len()
            ),
        });
    }

    // conv_norm_out + SiLU, conv_out.
    if config.norm_num_groups.is_some() {
        x = group_norm(&mut g, "conv_norm_out", x, groups, config.norm_eps, true)?;
    }
    let pad_out = config.conv_out_kernel / 2;
    let out = conv2d(
        &mut g,
        "conv_out",
        x,
        config.out_channels,
        config.conv_out_kernel,
        1,
        Padding::same(pad_out),
    )?;
    g.op("outputs", OpKind::Output, vec![read("sample", out)])?;
    g.finish()
}

/// diffusers' `Timesteps` + `TimestepEmbedding` (+ LCM's `cond_proj`, + SDXL's `text_time`
/// addition embedding), then the SiLU that every ResNet applies to it (computed once).
/// Returns `silu(emb)`, `[batch, 1, time_embed_dim]`.
fn time_embedding(
    g: &mut Graph,
    config: &UNet2DConditionConfig,
    n: usize,
    timesteps: TensorId,
    timestep_cond: Option<TensorId>,
    text_time: Option<(TensorId, TensorId)>,
) -> Result<TensorId, PlanError> {
    let c0 = config.block_out_channels.first().copied().unwrap_or(0);
    let temb_dim = config.time_embed_dim();
    let t_emb = g.tokens("time_proj", n, 1, c0)?;
    g.op(
        "time_proj",
        OpKind::TimestepEmbedding {
            dim: c0,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        },
        vec![read("t", timesteps), write("y", t_emb)],
    )?;
    if let Some(cond) = timestep_cond {
        let projected = linear(g, "time_embedding.cond_proj", cond, c0, false)?;
        residual_add(g, "time_embedding.cond_add", t_emb, projected)?;
    }
    let h = linear(g, "time_embedding.linear_1", t_emb, temb_dim, true)?;
    activation(g, "time_embedding.act", h, Activation::Silu)?;
    let emb = linear(g, "time_embedding.linear_2", h, temb_dim, true)?;

    if let Some((text_embeds, time_ids)) = text_time {
        let (pooled, ids_per_item) = text_time_dims(config)?;
        let dim = config.addition_time_embed_dim.unwrap_or(0);
        // `add_time_proj(time_ids.flatten())` reshaped to one row per item.
        let time_embeds = g.tokens("add_time_proj", n, 1, ids_per_item * dim)?;
        g.op(
            "add_time_proj",
            OpKind::TimestepEmbedding {
                dim,
                flip_sin_to_cos: config.flip_sin_to_cos,
                freq_shift: config.freq_shift,
            },
            vec![read("t", time_ids), write("y", time_embeds)],
        )?;
        let add_embeds = g.tokens("add_embeds", n, 1, pooled + ids_per_item * dim)?;
        g.op(
            "add_embeds",
            OpKind::Concat,
            vec![
                read("a", text_embeds),
                read("b", time_embeds),
                write("y", add_embeds),
            ],
        )?;
        let a = linear(g, "add_embedding.linear_1", add_embeds, temb_dim, true)?;
        activation(g, "add_embedding.act", a, Activation::Silu)?;
        let aug = linear(g, "add_embedding.linear_2", a, temb_dim, true)?;
        residual_add(g, "add_embedding.add", emb, aug)?;
    }
    g.op(
        "resnets_temb_silu",
        OpKind::Activation(Activation::Silu),
        vec![update("x", emb)],
    )?;
    Ok(emb)
}

/// `(pooled text width, time ids per item)` of an SDXL `text_time` embedding: 6 ids (original
/// size, crop, target size), the pooled width being the rest of
/// `projection_class_embeddings_input_dim`.
fn text_time_dims(config: &UNet2DConditionConfig) -> Result<(usize, usize), PlanError> {
    const TIME_IDS: usize = 6;
    let (Some(total), Some(dim)) = (
        config.projection_class_embeddings_input_dim,
        config.addition_time_embed_dim,
    ) else {
        return Err(PlanError::Architecture {
            part: "unet",
            message: "`text_time` needs `projection_class_embeddings_input_dim` and `addition_time_embed_dim`".into(),
        });
    };
    let pooled = total
        .checked_sub(TIME_IDS * dim)
        .ok_or_else(|| PlanError::Architecture {
            part: "unet",
            message: format!(
                "`projection_class_embeddings_input_dim` {total} is less than 6 x {dim}"
            ),
        })?;
    Ok((pooled, TIME_IDS))
}

/// `CrossAttnDownBlock2D`: `layers` x (ResNet, transformer), then a stride-2 downsampler
/// unless it is the last block. Every layer's output and the downsampler's are pushed to
/// `skips`.
fn cross_attn_down_block_2d(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    x: TensorId,
    block: &BlockSpec<'_>,
    skips: &mut Vec<TensorId>,
) -> Result<TensorId, PlanError> {
    down_block(g, ctx, path, x, block, skips)
}

/// `DownBlock2D`: as [`cross_attn_down_block_2d`] without transformers.
fn down_block_2d(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    x: TensorId,
    block: &BlockSpec<'_>,
    skips: &mut Vec<TensorId>,
) -> Result<TensorId, PlanError> {
    let plain = BlockSpec {
        attn: None,
        ..*block
    };
    down_block(g, ctx, path, x, &plain, skips)
}

/// The body both down blocks share (transformers only when `block.attn` is given).
fn down_block(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    mut x: TensorId,
    block: &BlockSpec<'_>,
    skips: &mut Vec<TensorId>,
) -> Result<TensorId, PlanError> {
    let spec = ResnetSpec {
        out_channels: block.out_channels,
        groups: ctx.groups,
        eps: ctx.config.norm_eps,
    };
    for j in 0..block.layers {
        x = resnet_block_2d(g, &format!("{path}.resnets.{j}"), x, Some(ctx.temb), spec)?;
        if let Some((attn, depths)) = block.attn {
            let depth = depths.get(j).copied().unwrap_or(1);
            x = transformer_2d_model(g, ctx, &format!("{path}.attentions.{j}"), x, attn, depth)?;
        }
        skips.push(x);
    }
    if block.resample {
        let padding = Padding::same(ctx.config.downsample_padding);
        x = downsample_2d(g, &format!("{path}.downsamplers.0"), x, padding)?;
        skips.push(x);
    }
    Ok(x)
}

/// `UNetMidBlock2DCrossAttn` with one layer: ResNet, transformer, ResNet.
fn unet_mid_block_2d_cross_attn(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    x: TensorId,
    attn: AttnBlock,
    depth: usize,
) -> Result<TensorId, PlanError> {
    let (_, channels, _, _) = g.nchw_dims(x)?;
    let spec = ResnetSpec {
        out_channels: channels,
        groups: ctx.groups,
        eps: ctx.config.norm_eps,
    };
    let x = resnet_block_2d(g, &format!("{path}.resnets.0"), x, Some(ctx.temb), spec)?;
    let x = transformer_2d_model(g, ctx, &format!("{path}.attentions.0"), x, attn, depth)?;
    resnet_block_2d(g, &format!("{path}.resnets.1"), x, Some(ctx.temb), spec)
}

/// `CrossAttnUpBlock2D`: `layers` x (concatenate the next skip, ResNet, transformer), then a
/// nearest upsampler and a 3x3 convolution unless it is the last block. The upsampler resizes
/// to the size of the skip the next block takes first, as diffusers' `upsample_size` does.
fn cross_attn_up_block_2d(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    x: TensorId,
    block: &BlockSpec<'_>,
    skips: &mut Vec<TensorId>,
) -> Result<TensorId, PlanError> {
    up_block(g, ctx, path, x, block, skips)
}

/// `UpBlock2D`: as [`cross_attn_up_block_2d`] without transformers.
fn up_block_2d(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    x: TensorId,
    block: &BlockSpec<'_>,
    skips: &mut Vec<TensorId>,
) -> Result<TensorId, PlanError> {
    let plain = BlockSpec {
        attn: None,
        ..*block
    };
    up_block(g, ctx, path, x, &plain, skips)
}

/// The body both up blocks share (transformers only when `block.attn` is given).
fn up_block(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    mut x: TensorId,
    block: &BlockSpec<'_>,
    skips: &mut Vec<TensorId>,
) -> Result<TensorId, PlanError> {
    let spec = ResnetSpec {
        out_channels: block.out_channels,
        groups: ctx.groups,
        eps: ctx.config.norm_eps,
    };
    for j in 0..block.layers {
        let skip = skips.pop().ok_or_else(|| PlanError::Architecture {
            part: "unet",
            message: format!("{path}.resnets.{j} has no skip connection left"),
        })?;
        let cat = concat_channels(g, &format!("{path}.resnets.{j}.cat"), x, skip)?;
        x = resnet_block_2d(g, &format!("{path}.resnets.{j}"), cat, Some(ctx.temb), spec)?;
        if let Some((attn, depths)) = block.attn {
            let depth = depths.get(j).copied().unwrap_or(1);
            x = transformer_2d_model(g, ctx, &format!("{path}.attentions.{j}"), x, attn, depth)?;
        }
    }
    if block.resample {
        let size = match skips.last() {
            Some(&skip) => {
                let (_, _, h, w) = g.nchw_dims(skip)?;
                (h, w)
            }
            None => {
                let (_, _, h, w) = g.nchw_dims(x)?;
                (2 * h, 2 * w)
            }
        };
        x = upsample_2d(g, &format!("{path}.upsamplers.0"), x, size)?;
    }
    Ok(x)
}

/// `Transformer2DModel` (continuous input): group norm, `proj_in` (1x1 convolution then to
/// tokens, or to tokens then linear with `use_linear_projection`), `depth`
/// `BasicTransformerBlock`s, `proj_out` (the mirror image), plus the input.
fn transformer_2d_model(
    g: &mut Graph,
    ctx: &Ctx<'_>,
    path: &str,
    x: TensorId,
    attn: AttnBlock,
    depth: usize,
) -> Result<TensorId, PlanError> {
    let (_, channels, h, w) = g.nchw_dims(x)?;
    let head_dim = channels / attn.heads.max(1);
    let inner = attn.heads * head_dim;
    let normed = group_norm(
        g,
        &format!("{path}.norm"),
        x,
        ctx.groups,
        TRANSFORMER_NORM_EPS,
        false,
    )?;
    let mut tokens = if ctx.config.use_linear_projection {
        let t = to_tokens(g, &format!("{path}.to_tokens"), normed)?;
        linear(g, &format!("{path}.proj_in"), t, inner, true)?
    } else {
        let p = conv2d(
            g,
            &format!("{path}.proj_in"),
            normed,
            inner,
            1,
            1,
            Padding::same(0),
        )?;
        to_tokens(g, &format!("{path}.to_tokens"), p)?
    };
    let spec = AttentionSpec {
        heads: attn.heads,
        head_dim,
        qkv_bias: false,
    };
    for d in 0..depth {
        tokens = basic_transformer_block(
            g,
            &format!("{path}.transformer_blocks.{d}"),
            tokens,
            ctx.context,
            spec,
            attn.only_cross_attention,
        )?;
    }
    let out = if ctx.config.use_linear_projection {
        let p = linear(g, &format!("{path}.proj_out"), tokens, channels, true)?;
        to_nchw(g, &format!("{path}.to_nchw"), p, h, w)?
    } else {
        let t = to_nchw(g, &format!("{path}.to_nchw"), tokens, h, w)?;
        conv2d(
            g,
            &format!("{path}.proj_out"),
            t,
            channels,
            1,
            1,
            Padding::same(0),
        )?
    };
    residual_add(g, &format!("{path}.residual"), out, x)?;
    Ok(out)
}

/// `BasicTransformerBlock` (layer-norm variant, GEGLU feed-forward): self-attention
/// (cross-attention with `only_cross_attention`), cross-attention on the text, feed-forward,
/// each after a layer norm and added to the residual stream.
fn basic_transformer_block(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    context: TensorId,
    spec: AttentionSpec,
    only_cross_attention: bool,
) -> Result<TensorId, PlanError> {
    let n1 = layer_norm(g, &format!("{path}.norm1"), x, TRANSFORMER_LAYER_NORM_EPS)?;
    let first_context = only_cross_attention.then_some(context);
    let a1 = attention(g, &format!("{path}.attn1"), n1, first_context, spec)?;
    residual_add(g, &format!("{path}.attn1.residual"), a1, x)?;
    let n2 = layer_norm(g, &format!("{path}.norm2"), a1, TRANSFORMER_LAYER_NORM_EPS)?;
    let a2 = attention(g, &format!("{path}.attn2"), n2, Some(context), spec)?;
    residual_add(g, &format!("{path}.attn2.residual"), a2, a1)?;
    let n3 = layer_norm(g, &format!("{path}.norm3"), a2, TRANSFORMER_LAYER_NORM_EPS)?;
    let f = feed_forward(g, &format!("{path}.ff"), n3)?;
    residual_add(g, &format!("{path}.ff.residual"), f, a2)?;
    Ok(f)
}

/// Rejects configurations whose modules the walk (and the executors) do not implement.
fn check_supported(config: &UNet2DConditionConfig) -> Result<(), PlanError> {
    let unsupported = |what: String| Err(PlanError::Unsupported { part: "unet", what });
    for ty in &config.down_block_types {
        if ty != "CrossAttnDownBlock2D" && ty != "DownBlock2D" {
            return unsupported(format!("down block type `{ty}`"));
        }
    }
    for ty in &config.up_block_types {
        if ty != "CrossAttnUpBlock2D" && ty != "UpBlock2D" {
            return unsupported(format!("up block type `{ty}`"));
        }
    }
    if let Some(ty) = &config.mid_block_type
        && ty != "UNetMidBlock2DCrossAttn"
    {
        return unsupported(format!("mid block type `{ty}`"));
    }
    if config.norm_num_groups.is_none() {
        return unsupported("`norm_num_groups: null`".into());
    }
    if config.act_fn != "silu" {
        return unsupported(format!("`act_fn` `{}`", config.act_fn));
    }
    if config.time_embedding_type != "positional" {
        return unsupported(format!(
            "`time_embedding_type` `{}`",
            config.time_embedding_type
        ));
    }
    if config.resnet_time_scale_shift != "default" {
        return unsupported(format!(
            "`resnet_time_scale_shift` `{}`",
            config.resnet_time_scale_shift
        ));
    }
    if config.attention_type != "default" {
        return unsupported(format!("`attention_type` `{}`", config.attention_type));
    }
    if let Some(ty) = &config.addition_embed_type
        && ty != "text_time"
    {
        return unsupported(format!("`addition_embed_type` `{ty}`"));
    }
    let flags = [
        (
            config.class_embed_type.is_some() || config.num_class_embeds.is_some(),
            "class embeddings",
        ),
        (
            config.encoder_hid_dim.is_some() || config.encoder_hid_dim_type.is_some(),
            "`encoder_hid_dim`",
        ),
        (config.dual_cross_attention, "`dual_cross_attention`"),
        (config.center_input_sample, "`center_input_sample`"),
        (config.resnet_skip_time_act, "`resnet_skip_time_act`"),
        (
            config.time_embedding_act_fn.is_some(),
            "`time_embedding_act_fn`",
        ),
        (config.timestep_post_act.is_some(), "`timestep_post_act`"),
        (
            config.cross_attention_norm.is_some(),
            "`cross_attention_norm`",
        ),
        (config.class_embeddings_concat, "`class_embeddings_concat`"),
        (
            config.resnet_out_scale_factor != 1.0,
            "`resnet_out_scale_factor` other than 1",
        ),
        (
            config.mid_block_scale_factor != 1.0,
            "`mid_block_scale_factor` other than 1",
        ),
    ];
    if let Some((_, what)) = flags.iter().find(|(set, _)| *set) {
        return unsupported((*what).into());
    }
    for kernel in [config.conv_in_kernel, config.conv_out_kernel] {
        if kernel != 1 && kernel != 3 {
            return unsupported(format!("{kernel}x{kernel} `conv_in`/`conv_out`"));
        }
    }
    let cross = config.cross_attention_dim_per_block();
    if cross.windows(2).any(|w| w[0] != w[1]) {
        return unsupported("different `cross_attention_dim` per block".into());
    }
    let blocks = config.blocks();
    if blocks == 0 {
        return Err(PlanError::Architecture {
            part: "unet",
            message: "`block_out_channels` is empty".into(),
        });
    }
    let lens = [
        config.down_block_types.len(),
        config.up_block_types.len(),
        config.heads_per_block().len(),
        config.layers_per_block().len(),
        config.transformer_depth_per_block().len(),
        config.only_cross_attention_per_block().len(),
        cross.len(),
        config.up_transformer_depths().len(),
    ];
    if lens.iter().any(|&len| len != blocks) {
        return Err(PlanError::Architecture {
            part: "unet",
            message: format!("per-block settings do not all have {blocks} entries"),
        });
    }
    Ok(())
}
