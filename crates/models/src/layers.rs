//! The GPU layers the models are built from (diffusers' `nn.Linear`, `nn.Conv2d`,
//! `nn.GroupNorm`, `nn.LayerNorm`), their weights loaded by name from a scoped weight source,
//! and the few helpers every model shares.

use sd_kernels::ops::{self, Conv2dChunk, Conv2dShape, GroupNormShape};
use sd_kernels::{Batch, DType, GpuContext, Tensor};
use sd_weights::Scope;

use crate::chunks::{self, ChunkPolicy, Chunks};
use crate::{ModelError, Result};

/// Where a model's parameters come from: a scoped weight source, the context they are uploaded
/// to, and the storage of weight matrices (f16 by default, f32 for parity tests).
#[derive(Clone)]
pub struct Params<'a> {
    pub ctx: &'a GpuContext,
    pub scope: Scope<'a>,
    pub matrices: DType,
}

impl std::fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Params({}, {:?})", self.scope.prefix(), self.matrices)
    }
}

impl<'a> Params<'a> {
    /// The parameters under `name`.
    pub fn scope(&self, name: &str) -> Self {
        Self {
            ctx: self.ctx,
            scope: self.scope.scope(name),
            matrices: self.matrices,
        }
    }

    /// The parameters of item `i` of a list (`down_blocks.0`).
    pub fn at(&self, i: usize) -> Self {
        Self {
            ctx: self.ctx,
            scope: self.scope.at(i),
            matrices: self.matrices,
        }
    }

    /// Whether a tensor exists (optional layers such as `conv_shortcut`).
    pub fn contains(&self, name: &str) -> bool {
        self.scope.contains(name)
    }

    /// A 1-D parameter (bias, norm weight), always f32 on the GPU.
    pub fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        let values = self.scope.tensor_f32(name, &[len])?;
        Ok(self.ctx.upload_f32(&values, &[len])?)
    }

    /// A parameter uploaded as f32 whatever the matrix storage (position embeddings).
    pub fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let values = self.scope.tensor_f32(name, shape)?;
        Ok(self.ctx.upload_f32(&values, shape)?)
    }

    /// A weight matrix or kernel in the chosen storage.
    pub fn matrix(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.matrices {
            DType::F16 => {
                let values = self.scope.tensor_f16(name, shape)?;
                Ok(self.ctx.upload_f16(&values, shape)?)
            }
            _ => self.f32_tensor(name, shape),
        }
    }
}

/// `nn.Linear`: `y = x W^T + b`.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    out_features: usize,
}

impl Linear {
    /// Loads `<name>.weight` `[out, in]` and, if `bias`, `<name>.bias`.
    pub fn load(
        p: &Params<'_>,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let p = p.scope(name);
        Ok(Self {
            weight: p.matrix("weight", &[out_features, in_features])?,
            bias: if bias {
                Some(p.vector("bias", out_features)?)
            } else {
                None
            },
            out_features,
        })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Records the layer on `x` `[..., in]`; returns `[..., out]`.
    pub fn forward(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.out_features;
        }
        let y = batch.context().empty(&shape, DType::F32)?;
        ops::linear(batch, x, &self.weight, self.bias.as_ref(), &y)?;
        Ok(y)
    }
}

/// `nn.Conv2d` with bias.
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    out_channels: usize,
    kernel: usize,
    shape: Conv2dShape,
}

impl Conv2d {
    /// Loads `<name>.weight` `[out, in, k, k]` and `<name>.bias`.
    pub fn load(
        p: &Params<'_>,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        shape: Conv2dShape,
    ) -> Result<Self> {
        let p = p.scope(name);
        Ok(Self {
            weight: p.matrix("weight", &[out_channels, in_channels, kernel, kernel])?,
            bias: p.vector("bias", out_channels)?,
            out_channels,
            kernel,
            shape,
        })
    }

    /// Records the convolution of `x` `[N, C, H, W]`.
    pub fn forward(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        let [n, _, h, w] = *x.shape() else {
            return Err(ModelError::Shape(format!(
                "conv2d input must be NCHW, is {:?}",
                x.shape()
            )));
        };
        let out = [
            n,
            self.out_channels,
            self.shape.out_size(h, self.kernel),
            self.shape.out_size(w, self.kernel),
        ];
        let y = batch.context().empty(&out, DType::F32)?;
        ops::conv2d(
            batch,
            x,
            &self.weight,
            Some(&self.bias),
            &y,
            self.shape,
            Conv2dChunk::WHOLE,
        )?;
        Ok(y)
    }

    /// Records the convolution of a channel-chunked tensor into chunks split by `policy`.
    pub fn forward_chunks(
        &self,
        batch: &mut Batch<'_>,
        x: &Chunks,
        policy: &ChunkPolicy,
    ) -> Result<Chunks> {
        chunks::conv2d(
            batch,
            x,
            &self.weight,
            &self.bias,
            self.shape,
            self.out_channels,
            policy,
        )
    }
}

/// `nn.GroupNorm` (affine), optionally followed by SiLU in the same pass.
#[derive(Debug)]
pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f32,
}

impl GroupNorm {
    /// Loads `<name>.weight` and `<name>.bias` `[channels]`.
    pub fn load(
        p: &Params<'_>,
        name: &str,
        channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let p = p.scope(name);
        Ok(Self {
            gamma: p.vector("weight", channels)?,
            beta: p.vector("bias", channels)?,
            groups,
            eps: eps as f32,
        })
    }

    /// Records the norm (and SiLU if `silu`) of `x` `[N, C, ...]`.
    pub fn forward(&self, batch: &mut Batch<'_>, x: &Tensor, silu: bool) -> Result<Tensor> {
        let y = batch.context().empty(x.shape(), DType::F32)?;
        let shape = GroupNormShape {
            groups: self.groups,
            eps: self.eps,
            silu,
            c_offset: 0,
        };
        ops::group_norm(batch, x, &self.gamma, &self.beta, &y, shape)?;
        Ok(y)
    }

    /// Records the norm (and SiLU) of a channel-chunked tensor, chunk by chunk.
    pub fn forward_chunks(&self, batch: &mut Batch<'_>, x: &Chunks, silu: bool) -> Result<Chunks> {
        chunks::group_norm(
            batch,
            x,
            &self.gamma,
            &self.beta,
            self.groups,
            self.eps,
            silu,
        )
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `<name>.weight` and `<name>.bias` `[dim]`.
    pub fn load(p: &Params<'_>, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let p = p.scope(name);
        Ok(Self {
            gamma: p.vector("weight", dim)?,
            beta: p.vector("bias", dim)?,
            eps: eps as f32,
        })
    }

    /// Records the norm of `x` `[..., dim]`.
    pub fn forward(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        let y = batch.context().empty(x.shape(), DType::F32)?;
        ops::layer_norm(batch, x, &self.gamma, &self.beta, &y, self.eps)?;
        Ok(y)
    }
}

/// Records `x` through an activation into a new tensor.
pub fn activation(batch: &mut Batch<'_>, f: ops::Activation, x: &Tensor) -> Result<Tensor> {
    let y = batch.context().empty(x.shape(), DType::F32)?;
    ops::activation(batch, f, x, &y)?;
    Ok(y)
}

/// `[N, C, H, W]` to token-major `[N, H*W, C]`.
pub fn to_tokens(batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = *x.shape() else {
        return Err(ModelError::Shape(format!(
            "expected NCHW, got {:?}",
            x.shape()
        )));
    };
    let y = batch.context().empty(&[n, h * w, c], DType::F32)?;
    ops::layout_nchw_to_nlc(batch, x, &y)?;
    Ok(y)
}

/// Token-major `[N, H*W, C]` back to `[N, C, H, W]`.
pub fn to_nchw(batch: &mut Batch<'_>, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let [n, _, c] = *x.shape() else {
        return Err(ModelError::Shape(format!(
            "expected [N, L, C], got {:?}",
            x.shape()
        )));
    };
    let y = batch.context().empty(&[n, c, h * w], DType::F32)?;
    ops::layout_nlc_to_nchw(batch, x, &y)?;
    Ok(y.reshape(&[n, c, h, w])?)
}
