//! Channel-chunked activations: a `[1, C, H, W]` tensor held as several buffers of whole
//! group-norm groups, so that no binding exceeds the device limit (the VAE decoder at full
//! resolution: 256 channels x 768 x 768 x 4 bytes is 576 MiB). Chunk sizes come from the
//! planner's [`channel_chunk`], the same decision the memory plan was checked with. A tensor
//! that fits is one chunk, so the small and the large case run the same code.
//!
//! Convolutions accumulate over input chunks and write one output chunk at a time; group norm
//! runs per chunk (chunks hold whole groups); elementwise work runs per chunk.

use sd_kernels::ops::{self, Conv2dChunk, GroupNormShape};
use sd_kernels::{Batch, DType, Tensor};

use crate::plan::channel_chunk;
use crate::{ModelError, Result};

/// A `[1, C, H, W]` activation split by channels.
#[derive(Debug, Clone)]
pub struct Chunks {
    /// The chunks, `[1, c_i, H, W]`, in channel order.
    pub parts: Vec<Tensor>,
    /// First channel of each chunk.
    pub offsets: Vec<usize>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// How tensors are split: every tensor of `C` channels is split the same way, as if each
/// channel were a `plane` (the largest spatial size the model part reaches), so that residual
/// adds and upsampling always meet equal splits. Splits respect the group-norm groups.
#[derive(Debug, Clone, Copy)]
pub struct ChunkPolicy {
    pub max_binding: u64,
    pub norm_groups: usize,
    /// Height and width every split is computed for.
    pub plane: (usize, usize),
}

impl ChunkPolicy {
    /// Channel ranges for `channels` channels.
    fn ranges(&self, channels: usize) -> Result<Vec<(usize, usize)>> {
        let (h, w) = self.plane;
        let group = if self.norm_groups > 0 && channels.is_multiple_of(self.norm_groups) {
            channels / self.norm_groups
        } else {
            1
        };
        let per = channel_chunk(channels, group, (h * w * 4) as u64, self.max_binding)?;
        Ok((0..channels)
            .step_by(per.max(1))
            .map(|lo| (lo, (lo + per).min(channels)))
            .collect())
    }

    /// Empty chunks for a `[1, channels, h, w]` tensor.
    pub fn empty(&self, batch: &Batch<'_>, channels: usize, h: usize, w: usize) -> Result<Chunks> {
        let ranges = self.ranges(channels)?;
        let parts = ranges
            .iter()
            .map(|&(lo, hi)| batch.context().empty(&[1, hi - lo, h, w], DType::F32))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Chunks {
            parts,
            offsets: ranges.iter().map(|r| r.0).collect(),
            channels,
            height: h,
            width: w,
        })
    }
}

impl Chunks {
    /// A whole tensor `[1, C, H, W]` split as `policy` says: itself when that is one chunk,
    /// else copies of its channel ranges (contiguous in NCHW with one batch item).
    pub fn split(batch: &mut Batch<'_>, t: &Tensor, policy: &ChunkPolicy) -> Result<Self> {
        let [1, c, h, w] = *t.shape() else {
            return Err(ModelError::Shape(format!(
                "chunked tensors are [1, C, H, W], not {:?}",
                t.shape()
            )));
        };
        let ranges = policy.ranges(c)?;
        if ranges.len() == 1 {
            return Ok(Self {
                parts: vec![t.clone()],
                offsets: vec![0],
                channels: c,
                height: h,
                width: w,
            });
        }
        let chunks = policy.empty(batch, c, h, w)?;
        for (part, &(lo, hi)) in chunks.parts.iter().zip(&ranges) {
            batch.copy_f32(t, lo * h * w, part, 0, (hi - lo) * h * w)?;
        }
        Ok(chunks)
    }

    /// The tensor as one buffer: itself when it is one chunk, else the chunks copied into one
    /// (the decoder's image, which is read back, not bound to a kernel).
    pub fn join(self, batch: &mut Batch<'_>) -> Result<Tensor> {
        if self.parts.len() == 1 {
            return Ok(self.parts[0].clone());
        }
        let plane = self.height * self.width;
        let whole = batch
            .context()
            .empty(&[1, self.channels, self.height, self.width], DType::F32)?;
        for (part, &offset) in self.parts.iter().zip(&self.offsets) {
            batch.copy_f32(part, 0, &whole, offset * plane, part.len())?;
        }
        Ok(whole)
    }

    fn channels_of(&self, i: usize) -> usize {
        self.offsets.get(i + 1).copied().unwrap_or(self.channels) - self.offsets[i]
    }
}

/// Convolution over chunks: every output chunk sums one dispatch per input chunk.
pub fn conv2d(
    batch: &mut Batch<'_>,
    x: &Chunks,
    weight: &Tensor,
    bias: &Tensor,
    shape: ops::Conv2dShape,
    out_channels: usize,
    policy: &ChunkPolicy,
) -> Result<Chunks> {
    let kernel = weight.shape().get(2).copied().unwrap_or(1);
    let (oh, ow) = (
        shape.out_size(x.height, kernel),
        shape.out_size(x.width, kernel),
    );
    let y = policy.empty(batch, out_channels, oh, ow)?;
    for (out, &oc_offset) in y.parts.iter().zip(&y.offsets) {
        for (i, (input, &ic_offset)) in x.parts.iter().zip(&x.offsets).enumerate() {
            let chunk = Conv2dChunk {
                ic_offset,
                oc_offset,
                accumulate: i > 0,
            };
            ops::conv2d(batch, input, weight, Some(bias), out, shape, chunk)?;
        }
    }
    Ok(y)
}

/// Group norm (and SiLU) per chunk; chunks hold whole groups.
pub fn group_norm(
    batch: &mut Batch<'_>,
    x: &Chunks,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Chunks> {
    let group_size = x.channels / groups;
    let mut out = x.clone();
    for (i, (part, &c_offset)) in x.parts.iter().zip(&x.offsets).enumerate() {
        let y = batch.context().empty(part.shape(), DType::F32)?;
        let shape = GroupNormShape {
            groups: x.channels_of(i) / group_size,
            eps,
            silu,
            c_offset,
        };
        ops::group_norm(batch, part, gamma, beta, &y, shape)?;
        out.parts[i] = y;
    }
    Ok(out)
}

/// Nearest upsampling per chunk to `h x w`.
pub fn upsample_nearest(
    batch: &mut Batch<'_>,
    x: &Chunks,
    h: usize,
    w: usize,
    policy: &ChunkPolicy,
) -> Result<Chunks> {
    let y = policy.empty(batch, x.channels, h, w)?;
    if y.offsets != x.offsets {
        return Err(ModelError::Shape(
            "upsampling needs the same channel split in and out".into(),
        ));
    }
    for (input, output) in x.parts.iter().zip(&y.parts) {
        ops::upsample_nearest(batch, input, output)?;
    }
    Ok(y)
}

/// In place: `y = (y + x) * factor` per chunk (both split the same way).
pub fn residual_add(batch: &mut Batch<'_>, x: &Chunks, y: &Chunks, factor: f32) -> Result<()> {
    if x.offsets != y.offsets {
        return Err(ModelError::Shape(
            "residual add of differently chunked tensors".into(),
        ));
    }
    for (a, b) in x.parts.iter().zip(&y.parts) {
        ops::residual_add(batch, a, b, factor)?;
    }
    Ok(())
}
