//! The recorder interface: the operations a network block issues, each named by its diffusers
//! module path. The networks (`nets`) are written once against it and read three ways:
//!
//! - [`crate::gpu::GpuRecorder`] records the kernel dispatches into a [`sd_kernels::Batch`]
//!   (the executor);
//! - [`crate::plan::Graph`] records buffers, lifetimes and chunks and checks them against the
//!   device limits (the memory planner);
//! - [`crate::cost::CostRecorder`] records each op's FLOPs, bytes and dispatches.
//!
//! Paths are relative to the model part (`down_blocks.0.resnets.1.conv1`); a layer with weights
//! finds them at `<path>.weight` and `<path>.bias`. Every op returns a new tensor except
//! [`Recorder::residual_add`], which updates its first operand in place (the only in-place
//! kernel), so the plan's liveness is the executor's.

use sd_kernels::ops::Activation;

use crate::plan::{Padding, PlanError, Shape};

/// `nn.Conv2d(in, out, kernel, stride, padding)` with bias; the input channels come from the
/// input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: Padding,
}

impl Conv2d {
    /// A stride-1 convolution padded to keep the size (`kernel / 2` on every side).
    pub fn same(out_channels: usize, kernel: usize) -> Self {
        Self {
            out_channels,
            kernel,
            stride: 1,
            padding: Padding::same(kernel / 2),
        }
    }

    /// The output side for an input side: `(side + before + after - kernel) / stride + 1`.
    pub fn out_side(&self, side: usize) -> usize {
        (side + self.padding.before + self.padding.after).saturating_sub(self.kernel)
            / self.stride.max(1)
            + 1
    }
}

/// `nn.GroupNorm(groups, channels, eps)` (affine), optionally followed by SiLU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNorm {
    /// Groups.
    pub groups: usize,
    /// Epsilon.
    pub eps: f64,
    /// Whether SiLU follows in the same pass.
    pub silu: bool,
}

/// diffusers' `Timesteps`: the sinusoidal embedding of each value into `dim` features (max
/// period 10000), `per_row` values side by side in one output row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sinusoids {
    /// Features per value.
    pub dim: usize,
    /// Cosines first.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift`.
    pub freq_shift: f64,
    /// Values per output row (1 for the timestep; 6 for SDXL's time ids).
    pub per_row: usize,
}

/// Multi-head scaled dot-product attention, flash-style (no score matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Query `i` sees keys `0..=i` only (CLIP).
    pub causal: bool,
}

/// An `nn.LayerNorm` (`<path>.weight`, `<path>.bias`) that a projection applies to each row of
/// its input as it loads it, instead of a pass of its own (a transformer's pre-norms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputNorm<'a> {
    /// The norm's module path.
    pub path: &'a str,
    /// Epsilon.
    pub eps: f64,
}

/// What an op returns: the recorder's tensor or its error.
pub type Out<R> = Result<<R as Recorder>::Tensor, <R as Recorder>::Error>;

/// The operations a block issues. `Error` is what the recorder fails with; the networks' own
/// errors are [`PlanError`]s (an unsupported config, shapes that do not fit together).
pub trait Recorder {
    /// A tensor as this recorder sees it: GPU buffers, a planned tensor, or a shape.
    type Tensor: Clone;
    /// What a recorder fails with.
    type Error: From<PlanError>;

    /// The logical shape of `t`.
    fn shape(&self, t: &Self::Tensor) -> Shape;
    /// The part's input `name` (uploaded by the caller).
    fn input(&mut self, name: &str, shape: Shape) -> Out<Self>;
    /// The part's result `name` (read back by the caller).
    fn output(&mut self, name: &str, t: &Self::Tensor) -> Result<(), Self::Error>;

    /// `nn.Conv2d` on NCHW `x`.
    fn conv2d(&mut self, path: &str, x: &Self::Tensor, conv: Conv2d) -> Out<Self>;
    /// [`Recorder::conv2d`] followed by the residual connection `(y + r) * scale` (`r` shaped
    /// as the output), one op: the GEMM adds `r` as it writes `y`.
    fn conv2d_residual(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        conv: Conv2d,
        r: &Self::Tensor,
        scale: f64,
    ) -> Out<Self>;
    /// [`Recorder::conv2d`] plus `t[n, offset + c]` on every pixel of channel `c` of item `n`
    /// (a ResNet's time embedding: `t` is `[n, 1, width]`, every ResNet's side by side, and
    /// `(t, offset)` this one's columns), one op: the GEMM adds it as it writes.
    fn conv2d_channel_bias(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        conv: Conv2d,
        t: (&Self::Tensor, usize),
    ) -> Out<Self>;
    /// [`Recorder::conv2d`] of NCHW `x`, written token-major `[n, h*w, out]`: a transformer's
    /// 1x1 `proj_in` and the `to_tokens` after it, one op.
    fn conv2d_to_tokens(&mut self, path: &str, x: &Self::Tensor, conv: Conv2d) -> Out<Self>;
    /// [`Recorder::conv2d_residual`] of token-major `x` read as NCHW of `size`: a transformer's
    /// `to_nchw` and 1x1 `proj_out` with its residual connection, one op.
    fn conv2d_residual_from_tokens(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        size: (usize, usize),
        conv: Conv2d,
        r: &Self::Tensor,
        scale: f64,
    ) -> Out<Self>;
    /// `nn.GroupNorm` (and SiLU) on NCHW `x`.
    fn group_norm(&mut self, path: &str, x: &Self::Tensor, norm: GroupNorm) -> Out<Self>;
    /// [`Recorder::group_norm`] of `torch.cat([a, b], dim=1)`, read in place: the
    /// concatenation is never written (an up block's ResNet input and its skip connection).
    fn group_norm_of_concat(
        &mut self,
        path: &str,
        ab: [&Self::Tensor; 2],
        norm: GroupNorm,
    ) -> Out<Self>;
    /// [`Recorder::conv2d`] of `torch.cat([a, b], dim=1)`, read in place (that ResNet's
    /// `conv_shortcut`).
    fn conv2d_of_concat(&mut self, path: &str, ab: [&Self::Tensor; 2], conv: Conv2d) -> Out<Self>;
    /// `nn.Linear(in, out_features, bias)` on the rows of token-major `x`.
    fn linear(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        out_features: usize,
        bias: bool,
    ) -> Out<Self>;
    /// [`Recorder::linear`] followed by the residual connection `(y + r) * scale` (`residual` is
    /// `(r, scale)`), one op.
    fn linear_residual(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        out_features: usize,
        bias: bool,
        residual: (&Self::Tensor, f64),
    ) -> Out<Self>;
    /// [`Recorder::linear`] of `norm(x)`, one op.
    fn linear_normed(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        out_features: usize,
        bias: bool,
        norm: InputNorm<'_>,
    ) -> Out<Self>;
    /// Several `nn.Linear` layers on the same `x` (layer-normed first with `norm`) as one matmul (a self-attention's Q, K and V,
    /// as diffusers' `fuse_qkv_projections`): the weights of `layers` (full paths, each with
    /// its `out_features`) stacked by rows as `<path>.weight` (and `<path>.bias`), their outputs
    /// side by side in each token, `[n, l, sum of out_features]`.
    fn linear_stacked(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        layers: &[(&str, usize)],
        bias: bool,
        norm: Option<InputNorm<'_>>,
    ) -> Out<Self>;
    /// `nn.LayerNorm` over each token of `x`.
    fn layer_norm(&mut self, path: &str, x: &Self::Tensor, eps: f64) -> Out<Self>;
    /// An activation of `x`.
    fn activation(&mut self, path: &str, x: &Self::Tensor, f: Activation) -> Out<Self>;
    /// `x = (x + r) * scale`, in place in `x` (same shapes); returns `x`.
    fn residual_add(
        &mut self,
        path: &str,
        x: Self::Tensor,
        r: &Self::Tensor,
        scale: f64,
    ) -> Out<Self>;
    /// `[n, c, h, w]` to token-major `[n, h*w, c]`.
    fn to_tokens(&mut self, path: &str, x: &Self::Tensor) -> Out<Self>;
    /// Token-major `[n, h*w, c]` to `[n, c, h, w]`.
    fn to_nchw(&mut self, path: &str, x: &Self::Tensor, size: (usize, usize)) -> Out<Self>;
    /// `torch.cat([a, b], dim=1)` of NCHW tensors, or along the features of token-major ones.
    fn concat(&mut self, path: &str, a: &Self::Tensor, b: &Self::Tensor) -> Out<Self>;
    /// Nearest-neighbour resize of NCHW `x` to `size`.
    fn upsample_nearest(&mut self, path: &str, x: &Self::Tensor, size: (usize, usize))
    -> Out<Self>;
    /// `softmax(q k^T / sqrt(head_dim)) v` per head, token-major.
    fn attention(&mut self, path: &str, qkv: [&Self::Tensor; 3], heads: Heads) -> Out<Self>;
    /// Attention of `q` over keys and values side by side in each token of `kv`, `[n, l_kv, 2 *
    /// heads * head_dim]` (the text's, projected once per generation).
    fn attention_kv(
        &mut self,
        path: &str,
        q: &Self::Tensor,
        kv: &Self::Tensor,
        heads: Heads,
    ) -> Out<Self>;
    /// Self-attention on q, k and v side by side in each token of `qkv`, `[n, l, 3 * heads *
    /// head_dim]` (what [`Recorder::linear_stacked`] of the three projections writes).
    fn attention_packed(&mut self, path: &str, qkv: &Self::Tensor, heads: Heads) -> Out<Self>;
    /// diffusers' `GEGLU` as one op: `<path>.proj` (with bias) to `2 * out_features` of
    /// `norm(x)` (or `x`), then `value * gelu(gate)` of its halves, the gate applied as the
    /// projection writes.
    fn linear_geglu(
        &mut self,
        path: &str,
        x: &Self::Tensor,
        out_features: usize,
        norm: Option<InputNorm<'_>>,
    ) -> Out<Self>;
    /// Sinusoids of each value of flat `t`: `[len / per_row, 1, per_row * dim]`.
    fn sinusoids(&mut self, path: &str, t: &Self::Tensor, spec: Sinusoids) -> Out<Self>;
    /// CLIP's embeddings: `table[ids] + positions` (`<path>.token_embedding.weight`
    /// `[vocab, dim]`, `<path>.position_embedding.weight` `[len, dim]`), ids flat `[n * len]`.
    fn embedding(
        &mut self,
        path: &str,
        ids: &Self::Tensor,
        vocab: usize,
        len: usize,
        dim: usize,
    ) -> Out<Self>;
    /// Row `rows[i]` of item `i` of token-major `x`, as `[n, 1, d]` (a pooled text output).
    fn gather_rows(&mut self, path: &str, x: &Self::Tensor, rows: &[usize]) -> Out<Self>;
}

/// `[n, c, h, w]` of an NCHW tensor, or an architecture error naming `path`.
pub fn nchw<R: Recorder>(
    r: &R,
    path: &str,
    t: &R::Tensor,
) -> Result<(usize, usize, usize, usize), PlanError> {
    match r.shape(t) {
        Shape::Nchw { n, c, h, w } => Ok((n, c, h, w)),
        other => Err(layout_error(path, "NCHW", other)),
    }
}

/// `[n, l, d]` of a token-major tensor, or an architecture error naming `path`.
pub fn tokens<R: Recorder>(
    r: &R,
    path: &str,
    t: &R::Tensor,
) -> Result<(usize, usize, usize), PlanError> {
    match r.shape(t) {
        Shape::Tokens { n, l, d } => Ok((n, l, d)),
        other => Err(layout_error(path, "token-major", other)),
    }
}

fn layout_error(path: &str, wanted: &str, got: Shape) -> PlanError {
    PlanError::Architecture {
        part: "layout",
        message: format!("the input of {path} is {got}, expected a {wanted} tensor"),
    }
}

/// The output shape of each op, shared by every recorder.
pub mod shapes {
    use super::{Conv2d, PlanError, Shape, Sinusoids};

    /// A convolution's output.
    pub fn conv2d(path: &str, x: Shape, conv: &Conv2d) -> Result<Shape, PlanError> {
        let Shape::Nchw { n, h, w, .. } = x else {
            return Err(super::layout_error(path, "NCHW", x));
        };
        Ok(Shape::Nchw {
            n,
            c: conv.out_channels,
            h: conv.out_side(h),
            w: conv.out_side(w),
        })
    }

    /// A linear layer's output.
    pub fn linear(path: &str, x: Shape, out: usize) -> Result<Shape, PlanError> {
        let Shape::Tokens { n, l, .. } = x else {
            return Err(super::layout_error(path, "token-major", x));
        };
        Ok(Shape::Tokens { n, l, d: out })
    }

    /// `[n, c, h, w]` as tokens.
    pub fn to_tokens(path: &str, x: Shape) -> Result<Shape, PlanError> {
        let Shape::Nchw { n, c, h, w } = x else {
            return Err(super::layout_error(path, "NCHW", x));
        };
        Ok(Shape::Tokens { n, l: h * w, d: c })
    }

    /// Tokens as `[n, c, h, w]`.
    pub fn to_nchw(path: &str, x: Shape, (h, w): (usize, usize)) -> Result<Shape, PlanError> {
        let Shape::Tokens { n, l, d } = x else {
            return Err(super::layout_error(path, "token-major", x));
        };
        if l != h * w {
            return Err(PlanError::Architecture {
                part: "layout",
                message: format!("{path}: {l} tokens are not {h}x{w}"),
            });
        }
        Ok(Shape::Nchw { n, c: d, h, w })
    }

    /// The attention of q, k and v side by side in each token.
    pub fn attention_packed(path: &str, qkv: Shape) -> Result<Shape, PlanError> {
        let Shape::Tokens { n, l, d } = qkv else {
            return Err(super::layout_error(path, "token-major", qkv));
        };
        if !d.is_multiple_of(3) {
            return Err(PlanError::Architecture {
                part: "attention",
                message: format!("{path}: {d} features are not q, k and v of one width"),
            });
        }
        Ok(Shape::Tokens { n, l, d: d / 3 })
    }

    /// Two tensors side by side along channels (NCHW) or features (tokens).
    pub fn concat(path: &str, a: Shape, b: Shape) -> Result<Shape, PlanError> {
        match (a, b) {
            (
                Shape::Nchw { n, c, h, w },
                Shape::Nchw {
                    n: nb,
                    c: cb,
                    h: hb,
                    w: wb,
                },
            ) if (n, h, w) == (nb, hb, wb) => Ok(Shape::Nchw { n, c: c + cb, h, w }),
            (
                Shape::Tokens { n, l, d },
                Shape::Tokens {
                    n: nb,
                    l: lb,
                    d: db,
                },
            ) if (n, l) == (nb, lb) => Ok(Shape::Tokens { n, l, d: d + db }),
            _ => Err(PlanError::Architecture {
                part: "concat",
                message: format!("{path}: {a} and {b} differ in batch or size"),
            }),
        }
    }

    /// An NCHW tensor resized.
    pub fn upsample(path: &str, x: Shape, (h, w): (usize, usize)) -> Result<Shape, PlanError> {
        let Shape::Nchw { n, c, .. } = x else {
            return Err(super::layout_error(path, "NCHW", x));
        };
        Ok(Shape::Nchw { n, c, h, w })
    }

    /// Sinusoids of a flat tensor.
    pub fn sinusoids(path: &str, t: Shape, spec: &Sinusoids) -> Result<Shape, PlanError> {
        let Shape::Flat { len } = t else {
            return Err(super::layout_error(path, "flat", t));
        };
        if spec.per_row == 0 || !len.is_multiple_of(spec.per_row) {
            return Err(PlanError::Architecture {
                part: "layout",
                message: format!("{path}: {len} values are not rows of {}", spec.per_row),
            });
        }
        Ok(Shape::Tokens {
            n: len / spec.per_row,
            l: 1,
            d: spec.per_row * spec.dim,
        })
    }

    /// CLIP's embedding of flat ids.
    pub fn embedding(path: &str, ids: Shape, len: usize, dim: usize) -> Result<Shape, PlanError> {
        let Shape::Flat { len: total } = ids else {
            return Err(super::layout_error(path, "flat", ids));
        };
        if len == 0 || !total.is_multiple_of(len) {
            return Err(PlanError::Architecture {
                part: "layout",
                message: format!("{path}: {total} ids are not rows of {len}"),
            });
        }
        Ok(Shape::Tokens {
            n: total / len,
            l: len,
            d: dim,
        })
    }

    /// One row per item.
    pub fn gather_rows(path: &str, x: Shape, rows: &[usize]) -> Result<Shape, PlanError> {
        let Shape::Tokens { n, l, d } = x else {
            return Err(super::layout_error(path, "token-major", x));
        };
        if rows.len() != n || rows.iter().any(|&r| r >= l) {
            return Err(PlanError::Architecture {
                part: "layout",
                message: format!("{path}: rows {rows:?} do not fit {n} items of {l} tokens"),
            });
        }
        Ok(Shape::Tokens { n, l: 1, d })
    }
}
