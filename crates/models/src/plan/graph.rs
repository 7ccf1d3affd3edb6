//! The record a planner walk produces: tensors and their buffers, weights, and the ops in
//! execution order with what each binds; then the analysis over it (liveness, the activation
//! peak, the pool the executors' size-bucketed buffer pool would build, the largest binding
//! and buffer), checked against the device limits.

use std::collections::HashMap;
use std::fmt;

use super::chunk::{ChunkSpec, chunk_layout};
use super::{DeviceLimits, Part, PlanError};

/// Bytes of one activation element: activations are f32 (token ids are u32).
pub const ACTIVATION_BYTES: u64 = 4;

/// Pooled buffers are sized in multiples of this many bytes, as in `sd-kernels`' buffer pool,
/// which reuses a free buffer only of exactly the same rounded size.
pub const POOL_SIZE_QUANTUM: u64 = 256;

/// Index of a tensor in [`PartPlan::tensors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// Index of an activation buffer in [`PartPlan::buffers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub usize);

/// Index of a weight in [`PartPlan::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightId(pub usize);

/// The logical shape and layout of an activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `[n, c, h, w]`, the layout of convolutions and group norms.
    Nchw {
        /// Batch items.
        n: usize,
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// `[n, l, d]` token-major, the layout inside transformers (and `[n, 1, d]` for vectors
    /// such as the time embedding).
    Tokens {
        /// Batch items.
        n: usize,
        /// Tokens per item.
        l: usize,
        /// Features per token.
        d: usize,
    },
    /// A flat array of `len` 4-byte elements (token ids, timesteps, group-norm statistics).
    Flat {
        /// Elements.
        len: usize,
    },
}

impl Shape {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        let dims: &[usize] = match self {
            Self::Nchw { n, c, h, w } => &[*n, *c, *h, *w],
            Self::Tokens { n, l, d } => &[*n, *l, *d],
            Self::Flat { len } => &[*len],
        };
        product(dims)
    }

    /// Size in bytes (4 per element).
    pub fn bytes(&self) -> u64 {
        self.elements().saturating_mul(ACTIVATION_BYTES)
    }

    /// Batch items (1 for [`Shape::Flat`]).
    pub fn batch(&self) -> usize {
        match self {
            Self::Nchw { n, .. } | Self::Tokens { n, .. } => *n,
            Self::Flat { .. } => 1,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nchw { n, c, h, w } => write!(f, "[{n}, {c}, {h}, {w}]"),
            Self::Tokens { n, l, d } => write!(f, "[{n}, {l}, {d}] tokens"),
            Self::Flat { len } => write!(f, "[{len}]"),
        }
    }
}

/// The product of `dims` as `u64`, saturating (a saturated size then fails the limit checks).
pub(crate) fn product(dims: &[usize]) -> u64 {
    dims.iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
}

/// An activation tensor and the buffers that hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// Diffusers-style name: the op that produces it, e.g.
    /// `unet.down_blocks.0.resnets.0.conv1`.
    pub name: String,
    /// Shape and layout.
    pub shape: Shape,
    /// One buffer, or the chunks that [`chunk_layout`] decided, in order.
    pub chunks: Vec<Chunk>,
}

/// One buffer of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// The buffer.
    pub buffer: BufferId,
    /// Which part of the tensor it holds.
    pub spec: ChunkSpec,
}

/// An activation buffer (a whole tensor or one chunk of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    /// The tensor's name, with `[item i, a..b]` for a chunk.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// The tensor it belongs to.
    pub tensor: TensorId,
    /// Index of the first op that binds it (its allocation).
    pub first_op: usize,
    /// Index of the last op that binds it (it goes back to the pool after this op).
    pub last_op: usize,
    /// The pool buffer it lives in ([`PartPlan::pool`]).
    pub slot: usize,
}

/// How a weight is stored on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// Matrices, convolution kernels and embedding tables (2 or more dimensions).
    F16,
    /// Biases and norm scales and shifts (1 dimension).
    F32,
}

impl WeightDtype {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

/// A weight tensor, resident on the GPU for as long as its model is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weight {
    /// The tensor's key in the model's diffusers safetensors file, e.g.
    /// `down_blocks.0.attentions.0.proj_in.weight` (text encoder: without the `text_model.`
    /// prefix of transformers 4 checkpoints).
    pub name: String,
    /// Its PyTorch shape.
    pub shape: Vec<usize>,
    /// How it is stored.
    pub dtype: WeightDtype,
    /// How it is made from the file's tensors.
    pub assembly: Assembly,
}

/// How a weight is made from the file's tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembly {
    /// It is the file's tensor `name` itself.
    File,
    /// These tensors (key, shape), their rows stacked in order (Q, K and V as one matrix).
    Stacked(Vec<(String, Vec<usize>)>),
    /// The rows of this tensor's two halves interleaved, `[a0, b0, a1, b1, ...]`: a GEGLU
    /// projection's value and gate rows in pairs (`sd_kernels::ops::geglu_pairs`).
    GegluPairs(String),
}

impl Assembly {
    /// The file's tensors (key, shape) it reads, for a weight of `shape`.
    pub fn sources<'a>(&'a self, name: &'a str, shape: &'a [usize]) -> Vec<(&'a str, &'a [usize])> {
        match self {
            Self::File => vec![(name, shape)],
            Self::Stacked(parts) => parts.iter().map(|(n, s)| (n.as_str(), &s[..])).collect(),
            Self::GegluPairs(source) => vec![(source.as_str(), shape)],
        }
    }
}

impl Weight {
    /// Number of parameters.
    pub fn params(&self) -> u64 {
        product(&self.shape)
    }

    /// Size in bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        self.params().saturating_mul(self.dtype.bytes())
    }
}

/// How an op uses a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Written, not read (a new tensor).
    Write,
    /// Read and written in place.
    ReadWrite,
}

/// What an argument refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// An activation tensor (bound chunk by chunk).
    Tensor(TensorId),
    /// A weight (bound whole).
    Weight(WeightId),
}

/// One argument of an op: a kernel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    /// The binding's name in the kernel: `x`, `w`, `bias`, `y`, `stats`, `gamma`, `beta`, `q`,
    /// `k`, `v`, `o`, `r`, `t`, `ids`, `table`, `positions`, `a`, `b`.
    pub role: &'static str,
    /// What is bound.
    pub operand: Operand,
    /// How.
    pub access: Access,
}

/// Padding of a convolution, the same on both axes: `before` rows/columns at the top/left,
/// `after` at the bottom/right. Symmetric except for the VAE encoder's downsamplers, which pad
/// only the bottom and right (diffusers' `Downsample2D` with `padding=0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Rows (and columns) of zeros before the input.
    pub before: usize,
    /// Rows (and columns) of zeros after it.
    pub after: usize,
}

impl Padding {
    /// The same padding on every side.
    pub fn same(p: usize) -> Self {
        Self {
            before: p,
            after: p,
        }
    }
}

pub use sd_kernels::ops::Activation;

/// What an op computes. Shapes are those of its tensors; only what they do not say is here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpKind {
    /// A part's input arrives (uploaded, or left by the previous part); no kernel.
    Input,
    /// A part's result is used (read back, or kept for the next part); no kernel.
    Output,
    /// `x[n, l, :] = table[ids[n, l], :] + positions[l, :]` (CLIP's embeddings).
    Embedding,
    /// Sinusoidal embedding of `t` (one value per output row) into `dim` features
    /// (diffusers' `Timesteps`, max period 10000).
    TimestepEmbedding {
        /// Output features.
        dim: usize,
        /// Cosines first.
        flip_sin_to_cos: bool,
        /// `downscale_freq_shift`.
        freq_shift: f64,
    },
    /// `y = x W^T (+ bias)` over token rows.
    Linear {
        /// Whether the layer has a bias.
        bias: bool,
        /// `y = (y + r) * scale` in the same pass: a residual connection fused in.
        residual: Option<f64>,
        /// GEGLU in the epilogue: the weight's rows are (value, gate) pairs and the output is
        /// half as wide.
        geglu: bool,
        /// `nn.LayerNorm` (this epsilon) applied to each row of `x` as it is loaded.
        layer_norm: Option<f64>,
    },
    /// 2-D convolution with a square `kernel`, accumulating over input-channel chunks.
    Conv2d {
        /// Kernel height and width.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding.
        padding: Padding,
        /// `y = (y + r) * scale` after the last input chunk: a residual connection fused in.
        residual: Option<f64>,
        /// `y[n, c, :, :] += t[n, c]` in the same pass: a ResNet's time embedding fused in.
        channel_bias: bool,
        /// The input is token-major (`[n, h*w, c]`), read as NCHW.
        x_tokens: bool,
        /// The output is written token-major.
        y_tokens: bool,
    },
    /// Group-norm statistics: mean and 1/std per (item, group).
    GroupNormStats {
        /// Groups.
        groups: usize,
        /// Epsilon.
        eps: f64,
    },
    /// Group-norm affine from the statistics, with an optional fused SiLU.
    GroupNormApply {
        /// Groups.
        groups: usize,
        /// Epsilon.
        eps: f64,
        /// Whether SiLU follows.
        silu: bool,
    },
    /// Layer norm over each token's features.
    LayerNorm {
        /// Epsilon.
        eps: f64,
    },
    /// `softmax(q k^T / sqrt(head_dim)) v` per head, flash-style: no score buffer.
    Attention {
        /// Heads.
        heads: usize,
        /// Features per head.
        head_dim: usize,
        /// Query `i` sees keys `0..=i` only (CLIP).
        causal: bool,
    },
    /// An activation into a new tensor.
    Activation(Activation),
    /// `x = (x + r) * scale`, in place, same shapes.
    ResidualAdd {
        /// The factor (1, or `1 / mid_block_scale_factor`).
        scale: f64,
    },
    /// Nearest-neighbour resize to the output's size (2x, or the skip's size when a latent
    /// side is not a multiple of 2^upsamplers, as diffusers' `upsample_size`).
    UpsampleNearest,
    /// `y = [a, b]` along channels (NCHW) or features (tokens).
    Concat,
    /// Rows of the input copied into the output (buffer copies, no kernel): the end token's
    /// hidden state for a pooled text output.
    GatherRows,
    /// `[n, c, h, w]` to `[n, h*w, c]`.
    NchwToTokens,
    /// `[n, h*w, c]` to `[n, c, h, w]`.
    TokensToNchw,
}

impl OpKind {
    /// The op's name, as the cost model ([`crate::cost::OpCost::kind`]) names it; group-norm
    /// statistics are part of `group_norm`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
            Self::Embedding => "embedding",
            Self::TimestepEmbedding { .. } => "sinusoids",
            Self::Linear { .. } => "linear",
            Self::Conv2d { .. } => "conv2d",
            Self::GroupNormStats { .. } => "group_norm_stats",
            Self::GroupNormApply { .. } => "group_norm",
            Self::LayerNorm { .. } => "layer_norm",
            Self::Attention { .. } => "attention",
            Self::Activation(_) => "activation",
            Self::ResidualAdd { .. } => "residual_add",
            Self::UpsampleNearest => "upsample_nearest",
            Self::Concat => "concat",
            Self::GatherRows => "gather_rows",
            Self::NchwToTokens => "to_tokens",
            Self::TokensToNchw => "to_nchw",
        }
    }
}

/// One kernel launch (or a few: one per chunk) in execution order.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// Diffusers-style module path with the part's prefix, e.g.
    /// `unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1`.
    pub name: String,
    /// What it computes.
    pub kind: OpKind,
    /// Its bindings.
    pub args: Vec<Arg>,
}

/// A size with the name of what has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamedSize {
    /// What: a buffer, or `op: binding`.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

impl NamedSize {
    fn keep_larger(&mut self, name: impl FnOnce() -> String, bytes: u64) {
        if bytes > self.bytes {
            *self = Self {
                name: name(),
                bytes,
            };
        }
    }
}

/// The figures of one part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartSummary {
    /// Weight parameters.
    pub weight_params: u64,
    /// Weight bytes on the GPU (f16 matrices, f32 vectors).
    pub weight_bytes: u64,
    /// The most activation bytes live at once (liveness from first write to last read).
    pub activation_peak: u64,
    /// The op at which that peak is reached.
    pub peak_op: String,
    /// Bytes the size-bucketed pool allocates for the whole part (at least the peak).
    pub pool_bytes: u64,
    /// Buffers in that pool.
    pub pool_buffers: usize,
    /// The largest single binding (an activation chunk or a weight).
    pub largest_binding: NamedSize,
    /// The largest single buffer (a pool buffer or a weight).
    pub largest_buffer: NamedSize,
    /// Ops recorded (kernel launches before chunking, plus input/output markers).
    pub ops: usize,
}

/// Everything one model part needs for one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PartPlan {
    /// Which part.
    pub part: Part,
    /// Activation tensors.
    pub tensors: Vec<PlannedTensor>,
    /// Their buffers (one per chunk).
    pub buffers: Vec<Buffer>,
    /// Weights.
    pub weights: Vec<Weight>,
    /// Ops in execution order.
    pub ops: Vec<Op>,
    /// The pool: size of each pool buffer ([`Buffer::slot`] indexes it).
    pub pool: Vec<u64>,
    /// The figures.
    pub summary: PartSummary,
}

impl PartPlan {
    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&PlannedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The op named `name`, if any.
    pub fn op(&self, name: &str) -> Option<&Op> {
        self.ops.iter().find(|op| op.name == name)
    }

    /// Each buffer `op` binds, as `(role, name, bytes)`: every chunk of a tensor argument, and
    /// each weight.
    pub fn bindings<'a>(
        &'a self,
        op: &'a Op,
    ) -> impl Iterator<Item = (&'static str, &'a str, u64)> + 'a {
        op.args.iter().flat_map(move |arg| {
            let items: Vec<(&'static str, &'a str, u64)> = match arg.operand {
                Operand::Tensor(t) => self
                    .tensors
                    .get(t.0)
                    .map(|tensor| {
                        tensor
                            .chunks
                            .iter()
                            .filter_map(|c| self.buffers.get(c.buffer.0))
                            .map(|b| (arg.role, b.name.as_str(), b.bytes))
                            .collect()
                    })
                    .unwrap_or_default(),
                Operand::Weight(w) => self
                    .weights
                    .get(w.0)
                    .map(|w| vec![(arg.role, w.name.as_str(), w.bytes())])
                    .unwrap_or_default(),
            };
            items
        })
    }
}

/// Records a part's walk: the module functions add tensors, weights and ops to it.
#[derive(Debug)]
pub(crate) struct Graph {
    part: Part,
    limits: DeviceLimits,
    /// Group count used to choose channel-chunk granularity (`norm_num_groups`).
    norm_groups: usize,
    tensors: Vec<PlannedTensor>,
    buffers: Vec<Buffer>,
    weights: Vec<Weight>,
    weight_index: HashMap<String, WeightId>,
    ops: Vec<Op>,
}

/// A tensor argument that is read.
pub(crate) fn read(role: &'static str, t: TensorId) -> Arg {
    Arg {
        role,
        operand: Operand::Tensor(t),
        access: Access::Read,
    }
}

/// A tensor argument that is written.
pub(crate) fn write(role: &'static str, t: TensorId) -> Arg {
    Arg {
        role,
        operand: Operand::Tensor(t),
        access: Access::Write,
    }
}

/// A tensor argument that is updated in place.
pub(crate) fn update(role: &'static str, t: TensorId) -> Arg {
    Arg {
        role,
        operand: Operand::Tensor(t),
        access: Access::ReadWrite,
    }
}

/// A weight argument.
pub(crate) fn weight(role: &'static str, w: WeightId) -> Arg {
    Arg {
        role,
        operand: Operand::Weight(w),
        access: Access::Read,
    }
}

impl Graph {
    pub(crate) fn new(part: Part, limits: DeviceLimits, norm_groups: usize) -> Self {
        Self {
            part,
            limits,
            norm_groups,
            tensors: Vec::new(),
            buffers: Vec::new(),
            weights: Vec::new(),
            weight_index: HashMap::new(),
            ops: Vec::new(),
        }
    }

    /// The planned tensor `t`.
    pub(crate) fn planned(&self, t: TensorId) -> Option<&PlannedTensor> {
        self.tensors.get(t.0)
    }

    /// The limits planned for.
    pub(crate) fn limits(&self) -> &DeviceLimits {
        &self.limits
    }

    /// The full op or tensor name for a module path inside the part.
    pub(crate) fn name(&self, path: &str) -> String {
        format!("{}.{path}", self.part.prefix())
    }

    /// The shape of `t`.
    pub(crate) fn shape(&self, t: TensorId) -> Shape {
        self.tensors
            .get(t.0)
            .map_or(Shape::Flat { len: 0 }, |t| t.shape)
    }

    /// A new activation tensor produced by the op at `path`, chunked as the limits require.
    pub(crate) fn tensor(&mut self, path: &str, shape: Shape) -> Result<TensorId, PlanError> {
        let name = self.name(path);
        let specs = chunk_layout(
            &name,
            &shape,
            self.norm_groups,
            self.limits.max_storage_binding,
        )?;
        let id = TensorId(self.tensors.len());
        let single = specs.len() == 1;
        let mut chunks = Vec::with_capacity(specs.len());
        for spec in specs {
            let buffer = BufferId(self.buffers.len());
            let buffer_name = if single {
                name.clone()
            } else {
                format!(
                    "{name}[item {}, {}..{}]",
                    spec.item.unwrap_or(0),
                    spec.start,
                    spec.end
                )
            };
            self.buffers.push(Buffer {
                name: buffer_name,
                bytes: spec.bytes,
                tensor: id,
                first_op: usize::MAX,
                last_op: 0,
                slot: usize::MAX,
            });
            chunks.push(Chunk { buffer, spec });
        }
        self.tensors.push(PlannedTensor {
            name,
            shape,
            chunks,
        });
        Ok(id)
    }

    /// The weight with key `name` and PyTorch shape `shape` (f16 if 2-D or more, else f32).
    /// A key used twice refers to the same weight.
    pub(crate) fn weight(&mut self, name: String, shape: &[usize]) -> WeightId {
        let dtype = if shape.len() >= 2 {
            WeightDtype::F16
        } else {
            WeightDtype::F32
        };
        self.weight_as(name, shape, dtype)
    }

    /// The weight with key `name`, stored as `dtype`.
    pub(crate) fn weight_as(
        &mut self,
        name: String,
        shape: &[usize],
        dtype: WeightDtype,
    ) -> WeightId {
        if let Some(&id) = self.weight_index.get(&name) {
            return id;
        }
        let id = WeightId(self.weights.len());
        self.weight_index.insert(name.clone(), id);
        self.weights.push(Weight {
            name,
            shape: shape.to_vec(),
            dtype,
            assembly: Assembly::File,
        });
        id
    }

    /// The weight `name` made of the file's tensors `parts` (key, shape) stacked by rows: they
    /// must agree past the first axis. Stored as [`Graph::weight`] stores its shape.
    pub(crate) fn weight_stack(
        &mut self,
        name: String,
        parts: Vec<(String, Vec<usize>)>,
    ) -> Result<WeightId, PlanError> {
        let Some((_, first)) = parts.first() else {
            return Err(PlanError::Architecture {
                part: self.part.prefix(),
                message: format!("{name} stacks no weights"),
            });
        };
        if parts
            .iter()
            .any(|(_, s)| s.is_empty() || s[1..] != first[1..])
        {
            return Err(PlanError::Architecture {
                part: self.part.prefix(),
                message: format!("{name}: the shapes {parts:?} do not stack by rows"),
            });
        }
        let mut shape = first.clone();
        shape[0] = parts.iter().map(|(_, s)| s[0]).sum();
        let id = self.weight(name, &shape);
        self.weights[id.0].assembly = Assembly::Stacked(parts);
        Ok(id)
    }

    /// The weight `name`: the file's tensor `source` of `shape` (`[2 * d, ...]`) with its value
    /// and gate rows in pairs (GEGLU's projection, read by `linear_geglu`).
    pub(crate) fn weight_geglu_pairs(
        &mut self,
        name: String,
        source: String,
        shape: &[usize],
    ) -> WeightId {
        let id = self.weight(name, shape);
        self.weights[id.0].assembly = Assembly::GegluPairs(source);
        id
    }

    /// Records the op at `path`, checking that every buffer it binds fits one binding.
    pub(crate) fn op(&mut self, path: &str, kind: OpKind, args: Vec<Arg>) -> Result<(), PlanError> {
        let name = self.name(path);
        let max = self.limits.max_storage_binding;
        for arg in &args {
            match arg.operand {
                Operand::Tensor(t) => {
                    let tensor = self
                        .tensors
                        .get(t.0)
                        .ok_or_else(|| PlanError::Architecture {
                            part: self.part.prefix(),
                            message: format!("{name} binds an unknown tensor"),
                        })?;
                    for chunk in &tensor.chunks {
                        if chunk.spec.bytes > max {
                            return Err(PlanError::Limit {
                                name: format!("{name}: {} `{}`", arg.role, tensor.name),
                                needed: chunk.spec.bytes,
                                max,
                            });
                        }
                    }
                }
                Operand::Weight(w) => {
                    let weight = self
                        .weights
                        .get(w.0)
                        .ok_or_else(|| PlanError::Architecture {
                            part: self.part.prefix(),
                            message: format!("{name} binds an unknown weight"),
                        })?;
                    let bytes = weight.bytes();
                    let limit = max.min(self.limits.max_buffer);
                    if bytes > limit {
                        return Err(PlanError::Limit {
                            name: format!("{name}: {} `{}`", arg.role, weight.name),
                            needed: bytes,
                            max: limit,
                        });
                    }
                }
            }
        }
        self.ops.push(Op { name, kind, args });
        Ok(())
    }

    /// Checks that `t` is not split within a batch item: attention streams all keys and values
    /// of an item through one binding each.
    pub(crate) fn require_whole_items(
        &self,
        op_path: &str,
        role: &str,
        t: TensorId,
    ) -> Result<(), PlanError> {
        let Some(tensor) = self.tensors.get(t.0) else {
            return Ok(());
        };
        let split = tensor.chunks.len() > tensor.shape.batch().max(1);
        if split {
            let per_item = tensor.shape.bytes() / tensor.shape.batch().max(1) as u64;
            return Err(PlanError::Limit {
                name: format!(
                    "{}: {role} `{}` (one batch item)",
                    self.name(op_path),
                    tensor.name
                ),
                needed: per_item,
                max: self.limits.max_storage_binding,
            });
        }
        Ok(())
    }

    /// Liveness, the peak, the pool and the summary.
    pub(crate) fn finish(mut self) -> Result<PartPlan, PlanError> {
        for (index, op) in self.ops.iter().enumerate() {
            for arg in &op.args {
                let Operand::Tensor(t) = arg.operand else {
                    continue;
                };
                let Some(tensor) = self.tensors.get(t.0) else {
                    continue;
                };
                for chunk in &tensor.chunks {
                    if let Some(buffer) = self.buffers.get_mut(chunk.buffer.0) {
                        buffer.first_op = buffer.first_op.min(index);
                        buffer.last_op = buffer.last_op.max(index);
                    }
                }
            }
        }
        if let Some(unused) = self.buffers.iter().find(|b| b.first_op == usize::MAX) {
            return Err(PlanError::Architecture {
                part: self.part.prefix(),
                message: format!("{} is never used", unused.name),
            });
        }

        let mut summary = PartSummary {
            ops: self.ops.len(),
            ..PartSummary::default()
        };

        // Live bytes per op: a buffer is live from its first to its last op, inclusive.
        let mut delta = vec![0i128; self.ops.len() + 1];
        for b in &self.buffers {
            delta[b.first_op] += i128::from(b.bytes);
            delta[b.last_op + 1] -= i128::from(b.bytes);
        }
        let mut live = 0i128;
        for (index, d) in delta.iter().take(self.ops.len()).enumerate() {
            live += d;
            let bytes = u64::try_from(live).unwrap_or(0);
            if bytes > summary.activation_peak {
                summary.activation_peak = bytes;
                summary.peak_op = self.ops[index].name.clone();
            }
        }

        // The pool: at each op, its new buffers take a free pool buffer of the same rounded
        // size or a new one; buffers whose last op it is go back afterwards.
        let mut by_first: Vec<Vec<usize>> = vec![Vec::new(); self.ops.len()];
        let mut by_last: Vec<Vec<usize>> = vec![Vec::new(); self.ops.len()];
        for (index, b) in self.buffers.iter().enumerate() {
            by_first[b.first_op].push(index);
            by_last[b.last_op].push(index);
        }
        let mut pool: Vec<u64> = Vec::new();
        let mut pool_names: Vec<String> = Vec::new();
        let mut free: HashMap<u64, Vec<usize>> = HashMap::new();
        for op in 0..self.ops.len() {
            for &b in &by_first[op] {
                let size = self.buffers[b]
                    .bytes
                    .max(1)
                    .div_ceil(POOL_SIZE_QUANTUM)
                    .saturating_mul(POOL_SIZE_QUANTUM);
                let slot = match free.get_mut(&size).and_then(Vec::pop) {
                    Some(slot) => slot,
                    None => {
                        if size > self.limits.max_buffer {
                            return Err(PlanError::Limit {
                                name: format!("pool buffer for {}", self.buffers[b].name),
                                needed: size,
                                max: self.limits.max_buffer,
                            });
                        }
                        pool.push(size);
                        pool_names.push(self.buffers[b].name.clone());
                        pool.len() - 1
                    }
                };
                self.buffers[b].slot = slot;
            }
            for &b in &by_last[op] {
                let slot = self.buffers[b].slot;
                free.entry(pool[slot]).or_default().push(slot);
            }
        }
        summary.pool_bytes = pool.iter().sum();
        summary.pool_buffers = pool.len();
        for (size, name) in pool.iter().zip(&pool_names) {
            summary
                .largest_buffer
                .keep_larger(|| format!("pool buffer first holding {name}"), *size);
        }

        for w in &self.weights {
            summary.weight_params = summary.weight_params.saturating_add(w.params());
            summary.weight_bytes = summary.weight_bytes.saturating_add(w.bytes());
            summary
                .largest_buffer
                .keep_larger(|| w.name.clone(), w.bytes());
        }

        let mut plan = PartPlan {
            part: self.part,
            tensors: self.tensors,
            buffers: self.buffers,
            weights: self.weights,
            ops: self.ops,
            pool,
            summary: PartSummary::default(),
        };
        let mut largest = NamedSize::default();
        for op in &plan.ops {
            for (role, name, bytes) in plan.bindings(op) {
                largest.keep_larger(|| format!("{}: {role} `{name}`", op.name), bytes);
            }
        }
        summary.largest_binding = largest;
        plan.summary = summary;
        Ok(plan)
    }
}
