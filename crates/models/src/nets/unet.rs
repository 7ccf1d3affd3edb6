//! One `UNet2DConditionModel` forward pass (one denoising step), after diffusers'
//! `models/unets/unet_2d_condition.py`, `models/unets/unet_2d_blocks.py`
//! (`CrossAttnDownBlock2D`, `DownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D`,
//! `CrossAttnUpBlock2D`), `models/transformers/transformer_2d.py` (`Transformer2DModel`) and
//! `models/attention.py` (`BasicTransformerBlock`); with the extra time conditioning of
//! LCM-distilled models (`time_cond_proj_dim`: the guidance embedding) and of SDXL
//! (`addition_embed_type: text_time`: pooled text embeds and the size/crop time ids).

use sd_core::config::UNet2DConditionConfig;
use sd_kernels::ops::Activation;

use super::blocks::ResnetInput::{Concat, One};
use super::blocks::{
    Attention, ProjectionNames, ResnetBlock2D, architecture, downsample_2d, feed_forward,
    upsample_2d,
};
use crate::plan::{Padding, PlanError, Shape};
use crate::record::{self, Conv2d, GroupNorm, InputNorm, Out, Recorder, Sinusoids};

/// Epsilon of `Transformer2DModel`'s group norm (fixed in diffusers).
const TRANSFORMER_NORM_EPS: f64 = 1e-6;
/// Epsilon of `BasicTransformerBlock`'s layer norms (diffusers' default `norm_eps`).
const TRANSFORMER_LAYER_NORM_EPS: f64 = 1e-5;
/// SDXL's time ids per item: original size, crop top-left, target size.
const TIME_IDS: usize = 6;

/// The sizes of one UNet call's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetSize {
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

/// One attention over the text: its keys and values, `to_k` and `to_v` of the text hidden
/// states, do not change during a generation, so they are projected once
/// ([`unet_context_projections`], one matmul per attention: `<path>.to_kv`) and every UNet call
/// reads them as its input `<path>.to_kv`, `[batch, text_len, 2 * inner]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextProjection {
    /// The attention's path (`down_blocks.0.attentions.0.transformer_blocks.0.attn2`).
    pub path: String,
    /// Its width, `heads * head_dim`.
    pub inner: usize,
}

impl ContextProjection {
    /// The name of its keys and values, as an op, an output and an input.
    pub fn name(&self) -> String {
        format!("{}.to_kv", self.path)
    }
}

/// What every block of one call shares.
struct Shared<'a, T> {
    config: &'a UNet2DConditionConfig,
    /// Batch and text length of the call.
    size: &'a UNetSize,
    /// The attentions over the text met so far.
    projections: std::cell::RefCell<Vec<ContextProjection>>,
    /// Every ResNet's `time_emb_proj(silu(temb))` side by side, `[batch, 1, width]`.
    resnet_temb: T,
    /// Each ResNet's first column in `resnet_temb`, by path.
    resnet_temb_columns: Vec<(String, usize)>,
}

impl<T> Shared<'_, T> {
    /// The projected time embedding of the ResNet at `path` and its first column.
    fn temb(&self, path: &str) -> Result<(&T, usize), PlanError> {
        let column = self
            .resnet_temb_columns
            .iter()
            .find_map(|(p, column)| (p == path).then_some(*column))
            .ok_or_else(|| {
                architecture(
                    "unet",
                    format!("{path} is not among the ResNets whose time embeddings were projected"),
                )
            })?;
        Ok((&self.resnet_temb, column))
    }

    /// The projected keys and values of the text for the attention at `path`, an input.
    fn text_kv<R: Recorder<Tensor = T>>(&self, r: &mut R, path: &str, inner: usize) -> Out<R> {
        let projection = ContextProjection {
            path: path.to_owned(),
            inner,
        };
        let shape = Shape::Tokens {
            n: self.size.batch,
            l: self.size.text_len,
            d: 2 * inner,
        };
        let kv = r.input(&projection.name(), shape)?;
        self.projections.borrow_mut().push(projection);
        Ok(kv)
    }
}

/// Records one UNet call: the inputs `sample`, `timestep`, each attention's projected text
/// keys and values (`<path>.to_kv`, see [`ContextProjection`]), and `timestep_cond`,
/// `text_embeds`, `time_ids` when the config asks for them; the output `sample`. Returns the
/// attentions over the text, in order.
///
/// # Errors
///
/// [`PlanError::Unsupported`] for UNet features SD pipelines do not use (checked by
/// [`check_supported`] first), [`PlanError::Architecture`] for inconsistent shapes, and the
/// recorder's own errors.
pub fn unet_2d_condition_model<R: Recorder>(
    r: &mut R,
    config: &UNet2DConditionConfig,
    inputs: &UNetSize,
) -> Result<Vec<ContextProjection>, R::Error> {
    check_supported(config)?;
    let n = inputs.batch;
    let boc = &config.block_out_channels;

    let sample = r.input(
        "sample",
        Shape::Nchw {
            n,
            c: config.in_channels,
            h: inputs.height,
            w: inputs.width,
        },
    )?;
    let timesteps = r.input("timestep", Shape::Flat { len: n })?;
    let temb_silu = time_embedding(r, config, n, &timesteps)?;
    // Every ResNet's `time_emb_proj` reads the same `silu(temb)`: one stacked matmul.
    let resnets = resnet_time_projections(config);
    let paths: Vec<String> = resnets
        .iter()
        .map(|(path, _)| format!("{path}.time_emb_proj"))
        .collect();
    let projections: Vec<(&str, usize)> = paths
        .iter()
        .zip(&resnets)
        .map(|(path, (_, out))| (path.as_str(), *out))
        .collect();
    let resnet_temb =
        r.linear_stacked(RESNET_TIME_EMB_PROJ, &temb_silu, &projections, true, None)?;
    let resnet_temb_columns = resnets
        .iter()
        .scan(0, |column, (path, out)| {
            let first = *column;
            *column += out;
            Some((path.clone(), first))
        })
        .collect();
    let shared = Shared {
        config,
        size: inputs,
        projections: std::cell::RefCell::new(Vec::new()),
        resnet_temb,
        resnet_temb_columns,
    };

    let mut x = r.conv2d(
        "conv_in",
        &sample,
        Conv2d::same(boc[0], config.conv_in_kernel),
    )?;

    // Down blocks: every ResNet/attention output and every downsampler output is a skip.
    let heads = config.heads_per_block();
    let depths = config.transformer_depth_per_block();
    let layers = config.layers_per_block();
    let only_cross = config.only_cross_attention_per_block();
    let mut skips = vec![x.clone()];
    for (i, block_type) in config.down_block_types.iter().enumerate() {
        let block = DownBlock2D {
            out_channels: boc[i],
            layers: layers[i],
            add_downsample: i + 1 < boc.len(),
        };
        let path = format!("down_blocks.{i}");
        x = if block_type == "CrossAttnDownBlock2D" {
            let attn = CrossAttnDownBlock2D {
                block,
                transformer: Transformer2D::new(heads[i], only_cross[i]),
                depth: depths[i],
            };
            attn.forward(r, &shared, &path, &x, &mut skips)?
        } else {
            block.forward(r, &shared, &path, &x, &mut skips, None)?
        };
    }

    let last = boc.len() - 1;
    if config.mid_block_type.is_some() {
        let mid = UNetMidBlock2DCrossAttn {
            transformer: Transformer2D::new(heads[last], false),
            depth: depths[last],
        };
        x = mid.forward(r, &shared, "mid_block", &x)?;
    }

    // Up blocks, lowest resolution first; each takes `layers + 1` skips.
    let up_depths = config.up_transformer_depths();
    for (i, block_type) in config.up_block_types.iter().enumerate() {
        let down = last - i;
        let block = UpBlock2D {
            out_channels: boc[down],
            layers: layers[down] + 1,
            add_upsample: i < last,
        };
        let path = format!("up_blocks.{i}");
        x = if block_type == "CrossAttnUpBlock2D" {
            let depths = up_depths.get(i).cloned().unwrap_or_default();
            if depths.len() != block.layers {
                return Err(architecture(
                    "unet",
                    format!(
                        "{path} has {} layers but {} transformer depths",
                        block.layers,
                        depths.len()
                    ),
                )
                .into());
            }
            let attn = CrossAttnUpBlock2D {
                block,
                transformer: Transformer2D::new(heads[down], only_cross[down]),
                depths,
            };
            attn.forward(r, &shared, &path, &x, &mut skips)?
        } else {
            block.forward(r, &shared, &path, &x, &mut skips, None)?
        };
    }
    if !skips.is_empty() {
        return Err(architecture(
            "unet",
            format!(
                "{} skip connections are left over after the up blocks",
                skips.len()
            ),
        )
        .into());
    }

    let norm = GroupNorm {
        groups: groups(config),
        eps: config.norm_eps,
        silu: true,
    };
    x = r.group_norm("conv_norm_out", &x, norm)?;
    let out = r.conv2d(
        "conv_out",
        &x,
        Conv2d::same(config.out_channels, config.conv_out_kernel),
    )?;
    r.output("sample", &out)?;
    Ok(shared.projections.into_inner())
}

/// Records the projection of the text hidden states (input `encoder_hidden_states`, `[batch,
/// text_len, cross_attention_dim]`) into each attention's keys and values: `to_k` and `to_v`
/// stacked as one matmul per attention, the outputs `<path>.to_kv` that every UNet call of the
/// generation reads.
///
/// # Errors
///
/// The recorder's errors.
pub fn unet_context_projections<R: Recorder>(
    r: &mut R,
    config: &UNet2DConditionConfig,
    inputs: &UNetSize,
    projections: &[ContextProjection],
) -> Result<(), R::Error> {
    let context = r.input(
        "encoder_hidden_states",
        Shape::Tokens {
            n: inputs.batch,
            l: inputs.text_len,
            d: config.cross_attention_dim_per_block()[0],
        },
    )?;
    for projection in projections {
        let (k, v) = (
            format!("{}.to_k", projection.path),
            format!("{}.to_v", projection.path),
        );
        let layers = [(k.as_str(), projection.inner), (&v, projection.inner)];
        let name = projection.name();
        let kv = r.linear_stacked(&name, &context, &layers, false, None)?;
        r.output(&name, &kv)?;
    }
    Ok(())
}

/// The attentions over the text of a UNet call of this size, in the order the call reads
/// them (the call's walk, counted without a device).
///
/// # Errors
///
/// The walk's errors.
pub fn context_projections(
    config: &UNet2DConditionConfig,
    inputs: &UNetSize,
) -> Result<Vec<ContextProjection>, PlanError> {
    unet_2d_condition_model(&mut crate::cost::CostRecorder::default(), config, inputs)
}

/// The stacked `time_emb_proj` of every ResNet (weights `resnets_time_emb_proj.weight` and
/// `.bias`, assembled at load from the ResNets' own).
pub const RESNET_TIME_EMB_PROJ: &str = "resnets_time_emb_proj";

/// Every ResNet of the UNet, in the order of the walk, with its output channels: the down
/// blocks' `layers` each, the middle block's two, the up blocks' `layers + 1` each.
fn resnet_time_projections(config: &UNet2DConditionConfig) -> Vec<(String, usize)> {
    let boc = &config.block_out_channels;
    let layers = config.layers_per_block();
    let last = boc.len().saturating_sub(1);
    let mut resnets = Vec::new();
    for i in 0..config.down_block_types.len() {
        for j in 0..layers[i] {
            resnets.push((format!("down_blocks.{i}.resnets.{j}"), boc[i]));
        }
    }
    if config.mid_block_type.is_some() {
        for j in 0..2 {
            resnets.push((format!("mid_block.resnets.{j}"), boc[last]));
        }
    }
    for i in 0..config.up_block_types.len() {
        let down = last - i;
        for j in 0..=layers[down] {
            resnets.push((format!("up_blocks.{i}.resnets.{j}"), boc[down]));
        }
    }
    resnets
}

fn groups(config: &UNet2DConditionConfig) -> usize {
    config.norm_num_groups.unwrap_or(0)
}

/// diffusers' `Timesteps` + `TimestepEmbedding` (+ LCM's `cond_proj`, + SDXL's `text_time`
/// addition embedding), then the SiLU that every ResNet applies to it (computed once).
/// Returns `silu(emb)`, `[batch, 1, time_embed_dim]`.
fn time_embedding<R: Recorder>(
    r: &mut R,
    config: &UNet2DConditionConfig,
    n: usize,
    timesteps: &R::Tensor,
) -> Out<R> {
    let c0 = config.block_out_channels[0];
    let temb_dim = config.time_embed_dim();
    let sinusoids = |dim, per_row| Sinusoids {
        dim,
        flip_sin_to_cos: config.flip_sin_to_cos,
        freq_shift: config.freq_shift,
        per_row,
    };
    let mut t_emb = r.sinusoids("time_proj", timesteps, sinusoids(c0, 1))?;
    if let Some(dim) = config.time_cond_proj_dim {
        let cond = r.input("timestep_cond", Shape::Tokens { n, l: 1, d: dim })?;
        let projected = r.linear("time_embedding.cond_proj", &cond, c0, false)?;
        t_emb = r.residual_add("time_embedding.cond_add", t_emb, &projected, 1.0)?;
    }
    let h = r.linear("time_embedding.linear_1", &t_emb, temb_dim, true)?;
    let h = r.activation("time_embedding.act", &h, Activation::Silu)?;
    let mut emb = r.linear("time_embedding.linear_2", &h, temb_dim, true)?;

    if config.addition_embed_type.is_some() {
        let (pooled, time_dim) = text_time_dims(config)?;
        let text_embeds = r.input("text_embeds", Shape::Tokens { n, l: 1, d: pooled })?;
        let time_ids = r.input("time_ids", Shape::Flat { len: n * TIME_IDS })?;
        let time_embeds = r.sinusoids("add_time_proj", &time_ids, sinusoids(time_dim, TIME_IDS))?;
        let add_embeds = r.concat("add_embeds", &text_embeds, &time_embeds)?;
        let a = r.linear("add_embedding.linear_1", &add_embeds, temb_dim, true)?;
        let a = r.activation("add_embedding.act", &a, Activation::Silu)?;
        let aug = r.linear("add_embedding.linear_2", &a, temb_dim, true)?;
        emb = r.residual_add("add_embedding.add", emb, &aug, 1.0)?;
    }
    r.activation("resnets_temb_silu", &emb, Activation::Silu)
}

/// `(pooled text width, sinusoid width per time id)` of an SDXL `text_time` embedding: the
/// pooled width is what `projection_class_embeddings_input_dim` leaves after 6 time ids.
fn text_time_dims(config: &UNet2DConditionConfig) -> Result<(usize, usize), PlanError> {
    let (Some(total), Some(dim)) = (
        config.projection_class_embeddings_input_dim,
        config.addition_time_embed_dim,
    ) else {
        return Err(architecture(
            "unet",
            "`text_time` needs `projection_class_embeddings_input_dim` and \
             `addition_time_embed_dim`"
                .into(),
        ));
    };
    let pooled = total.checked_sub(TIME_IDS * dim).ok_or_else(|| {
        architecture(
            "unet",
            format!("`projection_class_embeddings_input_dim` {total} is less than 6 x {dim}"),
        )
    })?;
    Ok((pooled, dim))
}

fn resnet(config: &UNet2DConditionConfig, out_channels: usize, scale: f64) -> ResnetBlock2D {
    ResnetBlock2D {
        out_channels,
        groups: groups(config),
        eps: config.norm_eps,
        output_scale_factor: scale,
    }
}

/// `DownBlock2D`: `layers` ResNets, then a stride-2 downsampler unless it is the last block.
/// Every layer's output and the downsampler's are pushed to `skips`.
#[derive(Debug, Clone, Copy)]
pub struct DownBlock2D {
    /// Output channels of every ResNet.
    pub out_channels: usize,
    /// ResNets.
    pub layers: usize,
    /// Whether a downsampler follows.
    pub add_downsample: bool,
}

impl DownBlock2D {
    /// The block's body; a cross-attention block passes its transformer and depth.
    fn forward<R: Recorder>(
        &self,
        r: &mut R,
        shared: &Shared<'_, R::Tensor>,
        path: &str,
        x: &R::Tensor,
        skips: &mut Vec<R::Tensor>,
        attention: Option<(&Transformer2D, usize)>,
    ) -> Out<R> {
        let resnet = resnet(shared.config, self.out_channels, 1.0);
        let mut x = x.clone();
        for j in 0..self.layers {
            let p = format!("{path}.resnets.{j}");
            x = resnet.forward(r, &p, One(&x), Some(shared.temb(&p)?))?;
            if let Some((transformer, depth)) = attention {
                let p = format!("{path}.attentions.{j}");
                x = transformer.forward(r, shared, &p, &x, depth)?;
            }
            skips.push(x.clone());
        }
        if self.add_downsample {
            let padding = Padding::same(shared.config.downsample_padding);
            x = downsample_2d(r, &format!("{path}.downsamplers.0"), &x, padding)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

/// `CrossAttnDownBlock2D`: [`DownBlock2D`] with a [`Transformer2D`] after every ResNet.
#[derive(Debug, Clone, Copy)]
pub struct CrossAttnDownBlock2D {
    /// The ResNets and the downsampler.
    pub block: DownBlock2D,
    /// The transformers' settings.
    pub transformer: Transformer2D,
    /// Transformer blocks per transformer.
    pub depth: usize,
}

impl CrossAttnDownBlock2D {
    fn forward<R: Recorder>(
        &self,
        r: &mut R,
        shared: &Shared<'_, R::Tensor>,
        path: &str,
        x: &R::Tensor,
        skips: &mut Vec<R::Tensor>,
    ) -> Out<R> {
        let attention = Some((&self.transformer, self.depth));
        self.block.forward(r, shared, path, x, skips, attention)
    }
}

/// `UNetMidBlock2DCrossAttn` with one layer: ResNet, transformer, ResNet (the ResNets scaled
/// by `mid_block_scale_factor`).
#[derive(Debug, Clone, Copy)]
pub struct UNetMidBlock2DCrossAttn {
    /// The transformer's settings.
    pub transformer: Transformer2D,
    /// Its blocks.
    pub depth: usize,
}

impl UNetMidBlock2DCrossAttn {
    fn forward<R: Recorder>(
        &self,
        r: &mut R,
        shared: &Shared<'_, R::Tensor>,
        path: &str,
        x: &R::Tensor,
    ) -> Out<R> {
        let (_, channels, _, _) = record::nchw(r, path, x)?;
        let resnet = resnet(
            shared.config,
            channels,
            shared.config.mid_block_scale_factor,
        );
        let p = format!("{path}.resnets.0");
        let x = resnet.forward(r, &p, One(x), Some(shared.temb(&p)?))?;
        let p = format!("{path}.attentions.0");
        let x = self.transformer.forward(r, shared, &p, &x, self.depth)?;
        let p = format!("{path}.resnets.1");
        resnet.forward(r, &p, One(&x), Some(shared.temb(&p)?))
    }
}

/// `UpBlock2D`: `layers` x (concatenate the next skip, ResNet), then a nearest upsampler and
/// a 3x3 convolution unless it is the last block. The upsampler resizes to the size of the
/// skip the next block takes first, as diffusers' `upsample_size` does.
#[derive(Debug, Clone, Copy)]
pub struct UpBlock2D {
    /// Output channels of every ResNet.
    pub out_channels: usize,
    /// ResNets (`layers_per_block + 1`).
    pub layers: usize,
    /// Whether an upsampler follows.
    pub add_upsample: bool,
}

impl UpBlock2D {
    /// The block's body; a cross-attention block passes its transformer and depths.
    fn forward<R: Recorder>(
        &self,
        r: &mut R,
        shared: &Shared<'_, R::Tensor>,
        path: &str,
        x: &R::Tensor,
        skips: &mut Vec<R::Tensor>,
        attention: Option<(&Transformer2D, &[usize])>,
    ) -> Out<R> {
        let resnet = resnet(shared.config, self.out_channels, 1.0);
        let mut x = x.clone();
        for j in 0..self.layers {
            let skip = skips.pop().ok_or_else(|| {
                architecture(
                    "unet",
                    format!("{path}.resnets.{j} has no skip connection left"),
                )
            })?;
            // `torch.cat([x, skip], dim=1)`, read in place by the ResNet.
            let p = format!("{path}.resnets.{j}");
            x = resnet.forward(r, &p, Concat(&x, &skip), Some(shared.temb(&p)?))?;
            if let Some((transformer, depths)) = attention {
                let p = format!("{path}.attentions.{j}");
                x = transformer.forward(r, shared, &p, &x, depths[j])?;
            }
        }
        if self.add_upsample {
            let size = match skips.last() {
                Some(skip) => {
                    let (_, _, h, w) = record::nchw(r, path, skip)?;
                    (h, w)
                }
                None => {
                    let (_, _, h, w) = record::nchw(r, path, &x)?;
                    (2 * h, 2 * w)
                }
            };
            x = upsample_2d(r, &format!("{path}.upsamplers.0"), &x, size)?;
        }
        Ok(x)
    }
}

/// `CrossAttnUpBlock2D`: [`UpBlock2D`] with a [`Transformer2D`] after every ResNet.
#[derive(Debug, Clone)]
pub struct CrossAttnUpBlock2D {
    /// The ResNets and the upsampler.
    pub block: UpBlock2D,
    /// The transformers' settings.
    pub transformer: Transformer2D,
    /// Transformer blocks of each layer's transformer.
    pub depths: Vec<usize>,
}

impl CrossAttnUpBlock2D {
    fn forward<R: Recorder>(
        &self,
        r: &mut R,
        shared: &Shared<'_, R::Tensor>,
        path: &str,
        x: &R::Tensor,
        skips: &mut Vec<R::Tensor>,
    ) -> Out<R> {
        let attention = Some((&self.transformer, self.depths.as_slice()));
        self.block.forward(r, shared, path, x, skips, attention)
    }
}

/// `Transformer2DModel` (continuous input): group norm, `proj_in` (1x1 convolution then to
/// tokens, or to tokens then linear with `use_linear_projection`), `depth`
/// `BasicTransformerBlock`s, `proj_out` (the mirror image), plus the input.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2D {
    /// Attention heads.
    pub heads: usize,
    /// `only_cross_attention`: the first attention also attends to the text.
    pub only_cross_attention: bool,
}

impl Transformer2D {
    fn new(heads: usize, only_cross_attention: bool) -> Self {
        Self {
            heads,
            only_cross_attention,
        }
    }

    fn forward<R: Recorder>(
        &self,
        r: &mut R,
        shared: &Shared<'_, R::Tensor>,
        path: &str,
        x: &R::Tensor,
        depth: usize,
    ) -> Out<R> {
        let config = shared.config;
        let (_, channels, h, w) = record::nchw(r, path, x)?;
        let head_dim = channels / self.heads.max(1);
        let inner = self.heads * head_dim;
        let norm = GroupNorm {
            groups: groups(config),
            eps: TRANSFORMER_NORM_EPS,
            silu: false,
        };
        let normed = r.group_norm(&format!("{path}.norm"), x, norm)?;
        let mut tokens = if config.use_linear_projection {
            let t = r.to_tokens(&format!("{path}.to_tokens"), &normed)?;
            r.linear(&format!("{path}.proj_in"), &t, inner, true)?
        } else {
            // The 1x1 projection writes its output token-major.
            let proj_in = Conv2d::same(inner, 1);
            r.conv2d_to_tokens(&format!("{path}.proj_in"), &normed, proj_in)?
        };
        let block = BasicTransformerBlock {
            attention: Attention {
                heads: self.heads,
                head_dim,
                qkv_bias: false,
                causal: false,
                names: ProjectionNames::DIFFUSERS,
                fuse_qkv: true,
            },
            only_cross_attention: self.only_cross_attention,
        };
        for d in 0..depth {
            let p = format!("{path}.transformer_blocks.{d}");
            tokens = block.forward(r, shared, &p, &tokens)?;
        }
        if config.use_linear_projection {
            let p = r.linear(&format!("{path}.proj_out"), &tokens, channels, true)?;
            let out = r.to_nchw(&format!("{path}.to_nchw"), &p, (h, w))?;
            r.residual_add(&format!("{path}.residual"), out, x, 1.0)
        } else {
            // The 1x1 projection reads the tokens as NCHW and adds the residual as it writes.
            let proj_out = Conv2d::same(channels, 1);
            let path = format!("{path}.proj_out");
            r.conv2d_residual_from_tokens(&path, &tokens, (h, w), proj_out, x, 1.0)
        }
    }
}

/// `BasicTransformerBlock` (layer-norm variant, GEGLU feed-forward): self-attention
/// (cross-attention with `only_cross_attention`), cross-attention on the text, feed-forward,
/// each after a layer norm and added to the residual stream.
#[derive(Debug, Clone, Copy)]
pub struct BasicTransformerBlock {
    /// Both attentions' settings.
    pub attention: Attention,
    /// `attn1` attends to the text too.
    pub only_cross_attention: bool,
}

impl BasicTransformerBlock {
    fn forward<R: Recorder>(
        &self,
        r: &mut R,
        shared: &Shared<'_, R::Tensor>,
        path: &str,
        x: &R::Tensor,
    ) -> Out<R> {
        let [norm1, norm2, norm3] = [1, 2, 3].map(|i| format!("{path}.norm{i}"));
        let norm = |path| {
            Some(InputNorm {
                path,
                eps: TRANSFORMER_LAYER_NORM_EPS,
            })
        };
        let inner = self.attention.heads * self.attention.head_dim;
        // Each pre-norm is applied by the projections that follow it, and each residual is
        // added by the projection that ends its branch. The text's keys and values are inputs,
        // projected once per generation.
        let attn1 = format!("{path}.attn1");
        let first_kv = if self.only_cross_attention {
            Some(shared.text_kv(r, &attn1, inner)?)
        } else {
            None
        };
        let a1 = self
            .attention
            .forward(r, &attn1, x, norm(&norm1), first_kv.as_ref(), Some(x))?;
        let attn2 = format!("{path}.attn2");
        let kv = shared.text_kv(r, &attn2, inner)?;
        let a2 = self
            .attention
            .forward(r, &attn2, &a1, norm(&norm2), Some(&kv), Some(&a1))?;
        feed_forward(r, &format!("{path}.ff"), &a2, norm(&norm3), &a2)
    }
}

/// Rejects configurations whose modules the walk does not implement: the one check of a
/// UNet config, run before any weight is read.
///
/// # Errors
///
/// [`PlanError::Unsupported`] naming the setting, [`PlanError::Architecture`] for per-block
/// lists of different lengths.
pub fn check_supported(config: &UNet2DConditionConfig) -> Result<(), PlanError> {
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
    ];
    if let Some((_, what)) = flags.iter().find(|(set, _)| *set) {
        return unsupported((*what).into());
    }
    // The pipelines: latents, or latents plus mask and masked-image latents (inpainting).
    if config.in_channels != 4 && config.in_channels != 9 {
        return unsupported(format!(
            "`in_channels` {} (4, or 9 for inpainting models)",
            config.in_channels
        ));
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
        return Err(architecture("unet", "`block_out_channels` is empty".into()));
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
        return Err(architecture(
            "unet",
            format!("per-block settings do not all have {blocks} entries"),
        ));
    }
    Ok(())
}
