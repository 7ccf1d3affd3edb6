//! The networks on the GPU: CLIP, `UNet2DConditionModel` and `AutoencoderKL`'s encoder and
//! decoder, each its config plus its weights. Loading runs the network's walk with the plan
//! recorder first: that checks the config (before any weight is read) and lists every weight
//! the walk will use, by name, shape and storage, which are then uploaded. `forward` runs the
//! same walk with the [`GpuRecorder`].

use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};
use sd_kernels::{Batch, DType, GpuContext, Tensor, ops};
use sd_weights::Scope;

use super::recorder::{GpuRecorder, Weights};
use crate::nets::clip::{TextOutput, TextRequest, clip_text_model};
use crate::nets::unet::{
    ContextProjection, UNetSize, unet_2d_condition_model, unet_context_projections,
};
use crate::nets::vae;
use crate::plan::{Assembly, DeviceLimits, Graph, Part, PlanError, Weight, WeightDtype};
use crate::record::Recorder;
use crate::{ModelError, Result};

/// Where a model's weights come from: a scoped weight source, the context they are uploaded
/// to, and the storage of weight matrices (f16 by default, f32 for parity tests).
#[derive(Clone)]
pub struct WeightLoader<'a> {
    pub ctx: &'a GpuContext,
    pub scope: Scope<'a>,
    pub matrices: DType,
}

impl std::fmt::Debug for WeightLoader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WeightLoader({}, {:?})",
            self.scope.prefix(),
            self.matrices
        )
    }
}

/// Limits that split nothing: the walk that lists a model's weights.
const NO_LIMITS: DeviceLimits = DeviceLimits {
    max_storage_binding: u64::MAX,
    max_buffer: u64::MAX,
};

impl WeightLoader<'_> {
    /// Uploads the weights a planned walk uses: matrices in the chosen storage, vectors (and
    /// what the walk keeps in f32, such as CLIP's positions) as f32.
    fn load(&self, walk: Graph) -> Result<Weights> {
        let plan = walk.finish()?;
        let mut weights = Weights::with_capacity(plan.weights.len());
        for w in &plan.weights {
            let tensor = match (w.dtype, self.matrices) {
                (WeightDtype::F16, DType::F16) => {
                    let values = assemble(w, |name, shape| self.scope.tensor_f16(name, shape))?;
                    self.ctx.upload_f16(&values, &w.shape)?
                }
                _ => {
                    let values = assemble(w, |name, shape| self.scope.tensor_f32(name, shape))?;
                    self.ctx.upload_f32(&values, &w.shape)?
                }
            };
            weights.insert(w.name.clone(), tensor);
        }
        Ok(weights)
    }
}

/// The values of `w` made from the file's tensors as its [`Assembly`] says: stacked parts one
/// after the other (row-major: their rows stacked), GEGLU's halves in row pairs.
fn assemble<T: Copy, E>(
    w: &Weight,
    mut read: impl FnMut(&str, &[usize]) -> std::result::Result<Vec<T>, E>,
) -> std::result::Result<Vec<T>, E> {
    let mut values = Vec::new();
    for (name, shape) in w.assembly.sources(&w.name, &w.shape) {
        values.extend(read(name, shape)?);
    }
    if matches!(w.assembly, Assembly::GegluPairs(_)) {
        values = ops::geglu_pairs(&values, w.shape[0]);
    }
    Ok(values)
}

/// The CLIP text encoder (`CLIPTextModel`, or `CLIPTextModelWithProjection` when the weights
/// have a `text_projection`).
#[derive(Debug)]
pub struct CLIPTextModel {
    config: CLIPTextConfig,
    weights: Weights,
    projection: bool,
}

/// What [`CLIPTextModel::forward_with_pooled`] returns.
#[derive(Debug)]
pub struct TextEncoding {
    /// The hidden states `[B, L, D]` the [`TextOutput`] asked for.
    pub hidden: Tensor,
    /// `text_embeds` `[B, projection_dim]`: the end token's final (normed) state through
    /// `text_projection`; `None` for a model without one.
    pub pooled: Option<Tensor>,
}

impl CLIPTextModel {
    /// The weights on the GPU, by key.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Builds the encoder from its config and weights.
    pub fn load(config: &CLIPTextConfig, p: &WeightLoader<'_>) -> Result<Self> {
        // transformers saves `CLIPTextModelWithProjection`'s projection beside `text_model.`
        // (the weight source strips that prefix, so it is a sibling here).
        let projection = p.scope.contains("text_projection.weight");
        let mut walk = Graph::new(Part::TextEncoder, NO_LIMITS, 0);
        let request = TextRequest {
            prompts: 1,
            output: TextOutput::Last,
            pooled_at: projection.then_some(&[0][..]),
        };
        clip_text_model(&mut walk, config, &request)?;
        Ok(Self {
            config: config.clone(),
            weights: p.load(walk)?,
            projection,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &CLIPTextConfig {
        &self.config
    }

    /// Records the encoder on token ids `[B, L]` (`ids_host` is their CPU copy, checked against
    /// the vocabulary); returns hidden states `[B, L, D]`.
    pub fn forward(
        &self,
        batch: &mut Batch<'_>,
        ids: &Tensor,
        ids_host: &[u32],
        output: TextOutput,
    ) -> Result<Tensor> {
        Ok(self.run(batch, ids, ids_host, output, None)?.hidden)
    }

    /// [`Self::forward`] plus the pooled `text_embeds` of a model with a `text_projection`,
    /// read at each row's end token (`eos[b]`, its position in row `b`: where transformers finds
    /// the first end token).
    pub fn forward_with_pooled(
        &self,
        batch: &mut Batch<'_>,
        ids: &Tensor,
        ids_host: &[u32],
        output: TextOutput,
        eos: &[usize],
    ) -> Result<TextEncoding> {
        self.run(batch, ids, ids_host, output, Some(eos))
    }

    fn run(
        &self,
        batch: &mut Batch<'_>,
        ids: &Tensor,
        ids_host: &[u32],
        output: TextOutput,
        eos: Option<&[usize]>,
    ) -> Result<TextEncoding> {
        let [prompts, _] = *ids.shape() else {
            return Err(ModelError::Mismatch {
                op: "text_encoder".into(),
                message: format!("token ids must be [B, L], are {:?}", ids.shape()),
            });
        };
        let pooled_at = eos.filter(|_| self.projection);
        let mut r = GpuRecorder::new(batch, &self.weights, "text_encoder", 0)
            .with_input("input_ids", ids.clone())
            .with_host_ids(ids_host);
        let request = TextRequest {
            prompts,
            output,
            pooled_at,
        };
        clip_text_model(&mut r, &self.config, &request)?;
        let pooled = match pooled_at {
            Some(_) => {
                let t = r.take_output("text_embeds")?;
                Some(t.reshape(&[prompts, t.len() / prompts.max(1)])?)
            }
            None => None,
        };
        Ok(TextEncoding {
            hidden: r.take_output("hidden")?,
            pooled,
        })
    }
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
    weights: Weights,
    /// Its attentions over the text, in the order a call reads them.
    projections: Vec<ContextProjection>,
}

/// The text's keys and values for every attention over it, `[B, L, 2 * inner]` each, by input
/// name: projected once per generation ([`UNet2DConditionModel::project_context`]) and read by
/// every UNet call.
#[derive(Debug, Clone)]
pub struct TextKeysValues {
    /// The batch the text was encoded for.
    batch: usize,
    tensors: Vec<(String, Tensor)>,
}

impl UNet2DConditionModel {
    /// The weights on the GPU, by key.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Builds the UNet from its config, loading every weight by its diffusers name.
    pub fn load(config: &UNet2DConditionConfig, p: &WeightLoader<'_>) -> Result<Self> {
        let groups = config.norm_num_groups.unwrap_or(0);
        let mut walk = Graph::new(Part::UNet, NO_LIMITS, groups);
        let inputs = UNetSize {
            batch: 1,
            height: 8,
            width: 8,
            text_len: 1,
        };
        let projections = unet_2d_condition_model(&mut walk, config, &inputs)?;
        let mut weights = p.load(walk)?;
        let mut context = Graph::new(Part::UNetContext, NO_LIMITS, 0);
        unet_context_projections(&mut context, config, &inputs, &projections)?;
        weights.extend(p.load(context)?);
        Ok(Self {
            config: config.clone(),
            weights,
            projections,
        })
    }

    /// Records the projection of `context` `[B, L, D]` (text hidden states) into every
    /// attention's keys and values, which the generation's calls then read.
    pub fn project_context(
        &self,
        batch: &mut Batch<'_>,
        context: &Tensor,
    ) -> Result<TextKeysValues> {
        let &[n, text_len, _] = context.shape() else {
            return Err(ModelError::Mismatch {
                op: "unet".into(),
                message: format!("context must be [B, L, D], is {:?}", context.shape()),
            });
        };
        let inputs = UNetSize {
            batch: n,
            height: 1,
            width: 1,
            text_len,
        };
        let mut r = GpuRecorder::new(batch, &self.weights, "unet", 0)
            .with_input("encoder_hidden_states", context.clone());
        unet_context_projections(&mut r, &self.config, &inputs, &self.projections)?;
        let tensors = self
            .projections
            .iter()
            .map(|p| Ok((p.name(), r.take_output(&p.name())?)))
            .collect::<Result<_>>()?;
        Ok(TextKeysValues { batch: n, tensors })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Records one UNet call: `sample` `[B, in, h, w]`, `timesteps` `[B]` (f32), the text's
    /// keys and values `text` (from [`Self::project_context`] of the same batch), and the
    /// extra conditioning the config asks for; returns the prediction `[B, out, h, w]`.
    pub fn forward(
        &self,
        batch: &mut Batch<'_>,
        sample: &Tensor,
        timesteps: &Tensor,
        text: &TextKeysValues,
        cond: &UNetConditioning<'_>,
    ) -> Result<Tensor> {
        let text_len = text.tensors.first().map_or(0, |(_, t)| t.shape()[1]);
        let (&[n, _, height, width], true) = (sample.shape(), n_matches(sample, text)) else {
            return Err(ModelError::Mismatch {
                op: "unet".into(),
                message: format!(
                    "sample must be NCHW with the text's batch {}, is {:?}",
                    text.batch,
                    sample.shape()
                ),
            });
        };
        let groups = self.config.norm_num_groups.unwrap_or(0);
        let mut r = GpuRecorder::new(batch, &self.weights, "unet", groups)
            .with_input("sample", sample.clone())
            .with_input("timestep", timesteps.clone());
        for (name, kv) in &text.tensors {
            r = r.with_input(name, kv.clone());
        }
        for (name, t) in [
            ("timestep_cond", cond.timestep_cond),
            ("text_embeds", cond.text_embeds),
            ("time_ids", cond.time_ids),
        ] {
            if let Some(t) = t {
                r = r.with_input(name, t.clone());
            }
        }
        let inputs = UNetSize {
            batch: n,
            height,
            width,
            text_len,
        };
        unet_2d_condition_model(&mut r, &self.config, &inputs)?;
        r.take_output("sample")
    }
}

impl TextKeysValues {
    /// Each attention's keys and values, by the UNet's input name (`<path>.to_kv`).
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(name, t)| (name.as_str(), t))
    }
}

/// Whether `sample` is `[B, ...]` for the batch `text` was projected for.
fn n_matches(sample: &Tensor, text: &TextKeysValues) -> bool {
    sample.shape().first() == Some(&text.batch)
}

/// One half of `AutoencoderKL`: its config and its weights on the GPU.
#[derive(Debug)]
pub struct Vae<Half> {
    config: AutoencoderKLConfig,
    weights: Weights,
    half: std::marker::PhantomData<Half>,
}

/// The encoder half (`encoder.*`, `quant_conv`).
#[derive(Debug)]
pub enum Encoder {}

/// The decoder half (`decoder.*`, `post_quant_conv`).
#[derive(Debug)]
pub enum Decoder {}

/// The VAE encoder plus `quant_conv`: image `[1, 3, H, W]` in [-1, 1] to the latent moments.
pub type VaeEncoder = Vae<Encoder>;

/// The VAE decoder plus `post_quant_conv`: latents (already divided by the scaling factor) to
/// an image `[1, 3, H, W]` in about [-1, 1].
pub type VaeDecoder = Vae<Decoder>;

impl<Half> Vae<Half> {
    /// The weights on the GPU, by key.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Lists the half's weights with `walk` at `side` x `side` and uploads them.
    fn load_with(
        config: &AutoencoderKLConfig,
        p: &WeightLoader<'_>,
        part: Part,
        walk: VaeWalk<Graph>,
        side: usize,
    ) -> Result<Self> {
        let mut g = Graph::new(part, NO_LIMITS, config.norm_num_groups);
        walk(&mut g, config, (side, side))?;
        Ok(Self {
            config: config.clone(),
            weights: p.load(g)?,
            half: std::marker::PhantomData,
        })
    }
}

impl VaeEncoder {
    /// Loads `encoder.*` and `quant_conv` from the VAE's weights.
    pub fn load(config: &AutoencoderKLConfig, p: &WeightLoader<'_>) -> Result<Self> {
        Self::load_with(config, p, Part::VaeEncoder, vae::encoder, 64)
    }

    /// Latent channels (the moments have twice as many: mean, then log-variance).
    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// Records the encoder on `image` `[1, 3, H, W]`; returns the moments `[1, 2L, H/8, W/8]`
    /// (mean channels first, then the unclamped log-variance). Activations larger than one
    /// binding are split into channel chunks, as the plan says.
    pub fn forward(&self, batch: &mut Batch<'_>, image: &Tensor) -> Result<Tensor> {
        let io = ("sample", image, "moments");
        run_vae(batch, &self.config, &self.weights, io, |r, c, s| {
            vae::encoder(r, c, s)
        })
    }
}

impl VaeDecoder {
    /// Loads `decoder.*` and `post_quant_conv` from the VAE's weights.
    pub fn load(config: &AutoencoderKLConfig, p: &WeightLoader<'_>) -> Result<Self> {
        Self::load_with(config, p, Part::VaeDecoder, vae::decoder, 8)
    }

    /// Records the decoder on `latents` `[1, L, h, w]` (divided by the scaling factor already).
    /// Activations larger than one binding (SD 1.5 at 512x512 and beyond) are split into
    /// channel chunks, as the plan says; below that everything is one buffer.
    pub fn forward(&self, batch: &mut Batch<'_>, latents: &Tensor) -> Result<Tensor> {
        let io = ("latents", latents, "sample");
        run_vae(batch, &self.config, &self.weights, io, |r, c, s| {
            vae::decoder(r, c, s)
        })
    }
}

/// The walk of a VAE half.
type VaeWalk<R> = fn(
    &mut R,
    &AutoencoderKLConfig,
    (usize, usize),
) -> std::result::Result<(), <R as Recorder>::Error>;

/// Records a VAE half on its one `[1, C, h, w]` input; returns its one output.
fn run_vae<'c>(
    batch: &mut Batch<'c>,
    config: &AutoencoderKLConfig,
    weights: &Weights,
    (input, t, output): (&'static str, &Tensor, &str),
    walk: impl FnOnce(&mut GpuRecorder<'_, 'c>, &AutoencoderKLConfig, (usize, usize)) -> Result<()>,
) -> Result<Tensor> {
    let size = image_size(t)?;
    let mut r = GpuRecorder::new(batch, weights, "vae", config.norm_num_groups)
        .with_input(input, t.clone());
    walk(&mut r, config, size)?;
    r.take_output(output)
}

/// `(h, w)` of a `[1, C, h, w]` tensor.
fn image_size(t: &Tensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [1, _, h, w] => Ok((h, w)),
        ref other => Err(PlanError::Architecture {
            part: "vae",
            message: format!("the VAE runs one [1, C, H, W] image at a time, not {other:?}"),
        }
        .into()),
    }
}
