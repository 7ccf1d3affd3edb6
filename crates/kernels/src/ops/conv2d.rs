//! 2-D convolution, NCHW, implicit GEMM (shaders/conv2d.wgsl).

use super::{Epilogue, GEMM_TILE, Residual, expect_f32, gemm_epilogue, to_u32, weight_variant};
use crate::kernel::{Binding, Entry, GEMM_BINDINGS, Kernel, Uniform, no_consts, uniform};
use crate::{Batch, KernelError, Result, Tensor};

uniform! {
    struct Params {
        batch: u32,
        in_channels: u32,
        in_h: u32,
        in_w: u32,
        out_channels: u32,
        out_h: u32,
        out_w: u32,
        kernel_h: u32,
        kernel_w: u32,
        stride: u32,
        pad: u32,
        weight_in_channels: u32,
        ic_offset: u32,
        oc_offset: u32,
        accumulate: u32,
        has_bias: u32,
        epilogue: u32,
        residual_factor: f32,
        x_tokens: u32,
        y_tokens: u32,
        bias_width: u32,
        bias_offset: u32,
        x_channels: u32,
        _pad: u32,
    }
}

/// The GEMM bindings, then the second input of a concatenation read in place.
const CONV2D_BINDINGS: [Binding; 6] = [
    GEMM_BINDINGS[0],
    GEMM_BINDINGS[1],
    GEMM_BINDINGS[2],
    GEMM_BINDINGS[3],
    GEMM_BINDINGS[4],
    Binding::read("x2"),
];

pub(crate) static CONV2D: Kernel = Kernel {
    file: "conv2d.wgsl",
    source: include_str!("../shaders/conv2d.wgsl"),
    params: Params::LAYOUT,
    bindings: &CONV2D_BINDINGS,
    entries: &[Entry {
        name: "conv2d",
        bindings: 6,
    }],
    reads_weights: true,
    consts: no_consts,
};

/// Stride and zero padding (the kernel size comes from the weight). SD uses 3x3 s1 p1, 3x3 s2 p1
/// (UNet downsamplers), 1x1 s1 p0, and 3x3 s2 with padding only after (the VAE encoder's
/// downsamplers pad right and bottom by one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub stride: usize,
    /// Zeros before the first row and column.
    pub pad_begin: usize,
    /// Zeros after the last row and column.
    pub pad_end: usize,
}

impl Conv2dShape {
    /// The same padding on both sides.
    pub const fn symmetric(stride: usize, pad: usize) -> Self {
        Self {
            stride,
            pad_begin: pad,
            pad_end: pad,
        }
    }

    /// Output height or width for an input of `size`.
    pub fn out_size(&self, size: usize, kernel: usize) -> usize {
        (size + self.pad_begin + self.pad_end).saturating_sub(kernel) / self.stride + 1
    }
}

/// Where a channel chunk sits in the whole convolution: see conv2d.wgsl. `Conv2dChunk::WHOLE`
/// is the ordinary, unchunked case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dChunk {
    /// First input channel of the weight that `x` holds.
    pub ic_offset: usize,
    /// First output channel of the weight that `y` holds.
    pub oc_offset: usize,
    /// Add to `y` (later input chunks) instead of starting from the bias.
    pub accumulate: bool,
}

impl Conv2dChunk {
    /// The whole tensor in one buffer.
    pub const WHOLE: Self = Self {
        ic_offset: 0,
        oc_offset: 0,
        accumulate: false,
    };
}

/// Records `y = conv2d(x, weight) + bias`. `x` is `[N, Cin, H, W]` (a chunk of the weight's
/// input channels), `weight` `[OC, IC, kh, kw]` (f16 or f32), `bias` `[OC]`, `y` `[N, Cout, OH,
/// OW]` (a chunk of the output channels).
pub fn conv2d(
    batch: &mut Batch<'_>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    shape: Conv2dShape,
    chunk: Conv2dChunk,
) -> Result<()> {
    conv2d_with_residual(batch, x, weight, bias, y, shape, chunk, None)
}

/// [`conv2d`], then `y = (y + residual) * factor` in the same pass: a ResNet's skip connection.
/// `residual` has `y`'s shape; with input chunks, pass it to the last chunk's call only.
#[allow(clippy::too_many_arguments)] // conv2d's seven, plus the epilogue
pub fn conv2d_with_residual(
    batch: &mut Batch<'_>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    shape: Conv2dShape,
    chunk: Conv2dChunk,
    residual: Option<Residual<'_>>,
) -> Result<()> {
    let layouts = (chunk, Conv2dLayouts::NCHW);
    conv2d_residual_in(batch, x, weight, bias, y, shape, layouts, residual)
}

/// Which tensors of a convolution are channels-last (`[N, H, W, C]`, as token-major `[N, H*W,
/// C]` tensors reshape for free) instead of NCHW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dLayouts {
    /// The input.
    pub x_tokens: bool,
    /// The output and the residual.
    pub y_tokens: bool,
}

impl Conv2dLayouts {
    /// Both NCHW.
    pub const NCHW: Self = Self {
        x_tokens: false,
        y_tokens: false,
    };
}

/// [`conv2d_with_residual`] of whole tensors in `layouts`: a transformer's 1x1 `proj_in`
/// writing tokens, or its `proj_out` reading them, with no transpose pass between.
#[allow(clippy::too_many_arguments)] // conv2d's six, plus the layouts and the epilogue
pub fn conv2d_in_layouts(
    batch: &mut Batch<'_>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    shape: Conv2dShape,
    layouts: Conv2dLayouts,
    residual: Option<Residual<'_>>,
) -> Result<()> {
    let layouts = (Conv2dChunk::WHOLE, layouts);
    conv2d_residual_in(batch, x, weight, bias, y, shape, layouts, residual)
}

/// One input, and at most a residual connection in the epilogue.
#[allow(clippy::too_many_arguments)] // conv2d's seven, plus the residual
fn conv2d_residual_in(
    batch: &mut Batch<'_>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    shape: Conv2dShape,
    layouts: (Conv2dChunk, Conv2dLayouts),
    residual: Option<Residual<'_>>,
) -> Result<()> {
    let epilogue = residual.map_or(Epilogue::None, Epilogue::Residual);
    conv2d_with_epilogue(batch, (x, None), weight, bias, y, shape, layouts, epilogue)
}

/// A per-(item, channel) bias: columns `offset..offset + Cout` of each item's row of `tensor`
/// (`[N, width]`; the UNet computes every ResNet's time embedding in one matmul, side by side).
#[derive(Clone, Copy, Debug)]
pub struct ChannelBias<'t> {
    /// `[N, width]` (any shape of `N * width` elements).
    pub tensor: &'t Tensor,
    /// The column of output channel 0.
    pub offset: usize,
}

/// [`conv2d`] of a whole tensor plus `channel_bias[n, offset + c]` on every pixel of channel `c`
/// of item `n`, in the same pass: a ResNet's time embedding, instead of an `add_channel_bias`
/// pass of its own.
pub fn conv2d_with_channel_bias(
    batch: &mut Batch<'_>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    shape: Conv2dShape,
    channel_bias: ChannelBias<'_>,
) -> Result<()> {
    let epilogue = Epilogue::ChannelBias(channel_bias);
    let whole = (Conv2dChunk::WHOLE, Conv2dLayouts::NCHW);
    conv2d_with_epilogue(batch, (x, None), weight, bias, y, shape, whole, epilogue)
}

/// [`conv2d`] of `torch.cat([a, b], dim=1)` (NCHW, whole tensors, the same batch and size),
/// read in place: a ResNet's `conv_shortcut` over its input and skip connection, with no
/// concatenated copy written.
pub fn conv2d_of_concat(
    batch: &mut Batch<'_>,
    [a, b]: [&Tensor; 2],
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    shape: Conv2dShape,
) -> Result<()> {
    let whole = (Conv2dChunk::WHOLE, Conv2dLayouts::NCHW);
    conv2d_with_epilogue(
        batch,
        (a, Some(b)),
        weight,
        bias,
        y,
        shape,
        whole,
        Epilogue::None,
    )
}

#[allow(clippy::too_many_arguments)] // conv2d's seven, plus the epilogue
fn conv2d_with_epilogue(
    batch: &mut Batch<'_>,
    (x, x2): (&Tensor, Option<&Tensor>),
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    shape: Conv2dShape,
    (chunk, layouts): (Conv2dChunk, Conv2dLayouts),
    epilogue: Epilogue<'_>,
) -> Result<()> {
    const OP: &str = "conv2d";
    let [oc_total, ic_total, kh, kw] = *weight.shape() else {
        return Err(KernelError::shape(
            OP,
            format!("weight must be [OC, IC, kh, kw], is {:?}", weight.shape()),
        ));
    };
    // [N, C, H, W], or [N, H, W, C] channels last.
    let nchw = |t: &Tensor, channels_last: bool| match *t.shape() {
        [n, h, w, c] if channels_last => Some([n, c, h, w]),
        [n, c, h, w] if !channels_last => Some([n, c, h, w]),
        _ => None,
    };
    let Some([n, x_channels, h, w]) = nchw(x, layouts.x_tokens) else {
        return Err(KernelError::shape(
            OP,
            format!("x must be 4-D as {layouts:?} says, is {:?}", x.shape()),
        ));
    };
    let x2_channels = match x2.map(|t| (t, nchw(t, false))) {
        None => 0,
        Some((_, Some([n2, c2, h2, w2]))) if (n2, h2, w2) == (n, h, w) => c2,
        Some((t, _)) => {
            return Err(KernelError::shape(
                OP,
                format!(
                    "the second input must be [{n}, C, {h}, {w}] beside x, is {:?}",
                    t.shape()
                ),
            ));
        }
    };
    let cin = x_channels + x2_channels;
    let Some([yn, cout, oh, ow]) = nchw(y, layouts.y_tokens) else {
        return Err(KernelError::shape(
            OP,
            format!("y must be 4-D as {layouts:?} says, is {:?}", y.shape()),
        ));
    };
    if layouts != Conv2dLayouts::NCHW && chunk != Conv2dChunk::WHOLE {
        return Err(KernelError::shape(
            OP,
            "channels-last tensors are never split into channel chunks",
        ));
    }
    let padded = shape.pad_begin + shape.pad_end;
    if shape.stride == 0 || h + padded < kh || w + padded < kw {
        return Err(KernelError::shape(
            OP,
            format!("{shape:?} with a {kh}x{kw} kernel does not fit a {h}x{w} input"),
        ));
    }
    if chunk.ic_offset + cin > ic_total || chunk.oc_offset + cout > oc_total {
        return Err(KernelError::shape(
            OP,
            format!(
                "channels {}..{} in, {}..{} out exceed the weight's {ic_total} in, {oc_total} out",
                chunk.ic_offset,
                chunk.ic_offset + cin,
                chunk.oc_offset,
                chunk.oc_offset + cout
            ),
        ));
    }
    let (eh, ew) = (shape.out_size(h, kh), shape.out_size(w, kw));
    if yn != n || oh != eh || ow != ew {
        return Err(KernelError::shape(
            OP,
            format!(
                "y is {:?}, expected [{n}, {cout}, {eh}, {ew}] in {layouts:?}",
                y.shape()
            ),
        ));
    }
    expect_f32(OP, "x", x, n * x_channels * h * w)?;
    if let Some(x2) = x2 {
        expect_f32(OP, "x2", x2, n * x2_channels * h * w)?;
    }
    expect_f32(OP, "y", y, n * cout * oh * ow)?;
    let (bias_width, bias_offset) = match epilogue {
        Epilogue::None => (0, 0),
        Epilogue::Residual(r) => {
            expect_f32(OP, "residual", r.tensor, n * cout * oh * ow)?;
            (0, 0)
        }
        Epilogue::ChannelBias(t) => {
            let width = t.tensor.len() / n.max(1);
            if t.offset + cout > width {
                return Err(KernelError::shape(
                    OP,
                    format!(
                        "channel bias columns {}..{} exceed its {width} per item",
                        t.offset,
                        t.offset + cout
                    ),
                ));
            }
            expect_f32(OP, "channel_bias", t.tensor, n * width)?;
            (width, t.offset)
        }
        Epilogue::Geglu => return Err(KernelError::shape(OP, "no GEGLU epilogue on NCHW")),
    };
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, oc_total)?;
    }
    let variant = weight_variant(batch, OP, weight)?;
    let has_bias = u32::from(bias.is_some() && !chunk.accumulate);
    let ((epilogue, residual_factor), [bias, residual]) =
        gemm_epilogue(batch.context(), bias, epilogue);
    let params = Params {
        batch: to_u32(OP, n)?,
        in_channels: to_u32(OP, cin)?,
        in_h: to_u32(OP, h)?,
        in_w: to_u32(OP, w)?,
        out_channels: to_u32(OP, cout)?,
        out_h: to_u32(OP, oh)?,
        out_w: to_u32(OP, ow)?,
        kernel_h: to_u32(OP, kh)?,
        kernel_w: to_u32(OP, kw)?,
        stride: to_u32(OP, shape.stride)?,
        pad: to_u32(OP, shape.pad_begin)?,
        weight_in_channels: to_u32(OP, ic_total)?,
        ic_offset: to_u32(OP, chunk.ic_offset)?,
        oc_offset: to_u32(OP, chunk.oc_offset)?,
        accumulate: u32::from(chunk.accumulate),
        has_bias,
        epilogue,
        residual_factor,
        x_tokens: u32::from(layouts.x_tokens),
        y_tokens: u32::from(layouts.y_tokens),
        bias_width: to_u32(OP, bias_width)?,
        bias_offset: to_u32(OP, bias_offset)?,
        x_channels: to_u32(OP, x_channels)?,
        _pad: 0,
    };
    // Columns run over the batch's pixels together, so that small latents (the UNet's 8x8 and
    // smaller levels) fill more of a tile.
    let groups = [
        to_u32(OP, (n * oh * ow).div_ceil(GEMM_TILE))?,
        to_u32(OP, cout.div_ceil(GEMM_TILE))?,
        1,
    ];
    batch.dispatch(
        &CONV2D,
        CONV2D.key("conv2d", variant),
        &params,
        &[
            x,
            weight,
            bias,
            y,
            residual,
            x2.unwrap_or(batch.context().placeholder()),
        ],
        groups,
    )
}
