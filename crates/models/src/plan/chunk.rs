//! How a tensor too large for one storage binding is split into several buffers.
//!
//! WebGPU binds at most `maxStorageBufferBindingSize` bytes (128 MiB by default) of a buffer
//! to one binding, so a larger tensor cannot be one buffer that kernels read whole. Such a
//! tensor is stored as one group of buffers per batch item, each holding a contiguous range:
//!
//! - NCHW: a range of **channels** of one item. Ranges hold whole group-norm groups (a chunk's
//!   channel count is a multiple of `channels / norm_num_groups`), so group norm runs per
//!   chunk exactly; convolutions read input chunks one after the other, accumulating
//!   (`ic_offset`, `accumulate`), and write output chunks (`oc_offset`).
//! - Token-major: a range of **tokens** of one item (linear layers, layer norms and
//!   elementwise ops are per token). Attention keys and values must stay whole per item.
//!
//! A tensor that fits one binding is one buffer holding every batch item. The executors call
//! the same functions, so they and the planner agree on every buffer.

use super::PlanError;
use super::graph::{ACTIVATION_BYTES, Shape};

/// Which part of a tensor one buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpec {
    /// The batch item, or `None` when the buffer holds every item (an unsplit tensor).
    pub item: Option<usize>,
    /// First channel (NCHW), token (token-major) or element (flat) held.
    pub start: usize,
    /// One past the last.
    pub end: usize,
    /// Size in bytes.
    pub bytes: u64,
}

/// Channels per chunk for `channels` channels of `bytes_per_channel` bytes each (`h * w * 4`
/// for one batch item), so that a chunk fits `max_binding` bytes and holds whole groups of
/// `group_size` channels. Chunks are as even as whole groups allow: all but the last hold the
/// returned count, the last holds the rest. Returns `channels` when everything fits.
///
/// # Errors
///
/// [`PlanError::Limit`] when even one group is larger than `max_binding`;
/// [`PlanError::Architecture`] when `group_size` is zero or does not divide `channels`.
pub fn channel_chunk(
    channels: usize,
    group_size: usize,
    bytes_per_channel: u64,
    max_binding: u64,
) -> Result<usize, PlanError> {
    if group_size == 0 || !channels.is_multiple_of(group_size) {
        return Err(PlanError::Architecture {
            part: "chunking",
            message: format!("groups of {group_size} channels do not divide {channels} channels"),
        });
    }
    let groups = channels / group_size;
    let group_bytes = (group_size as u64).saturating_mul(bytes_per_channel);
    if group_bytes == 0 || groups == 0 {
        return Ok(channels);
    }
    let max_groups = usize::try_from(max_binding / group_bytes).unwrap_or(usize::MAX);
    if max_groups == 0 {
        return Err(PlanError::Limit {
            name: format!("one group of {group_size} channels"),
            needed: group_bytes,
            max: max_binding,
        });
    }
    let chunks = groups.div_ceil(max_groups);
    Ok(groups.div_ceil(chunks) * group_size)
}

/// Tokens per chunk for `rows` tokens of `bytes_per_row` bytes each (`d * 4`), so that a
/// chunk fits `max_binding`; as even as possible, like [`channel_chunk`] with groups of one.
///
/// # Errors
///
/// [`PlanError::Limit`] when one token is larger than `max_binding`.
pub fn row_chunk(rows: usize, bytes_per_row: u64, max_binding: u64) -> Result<usize, PlanError> {
    channel_chunk(rows, 1, bytes_per_row, max_binding).map_err(|e| match e {
        PlanError::Limit { needed, max, .. } => PlanError::Limit {
            name: "one token".into(),
            needed,
            max,
        },
        other => other,
    })
}

/// The group size used for chunking an NCHW tensor of `channels` channels:
/// `channels / norm_groups` when that divides evenly (every tensor that is group-normed does),
/// else 1 (tensors such as 3-channel images or 4-channel latents, never group-normed).
pub fn chunk_group_size(channels: usize, norm_groups: usize) -> usize {
    if norm_groups > 0 && channels.is_multiple_of(norm_groups) && channels > 0 {
        channels / norm_groups
    } else {
        1
    }
}

/// The buffers of tensor `name` of shape `shape` (see the module docs): one [`ChunkSpec`] with
/// `item: None` when it fits `max_binding`, else per batch item the channel or token ranges of
/// [`channel_chunk`] / [`row_chunk`].
///
/// # Errors
///
/// [`PlanError::Limit`] naming the tensor when even one group of channels, one token, or a
/// flat tensor does not fit.
pub fn chunk_layout(
    name: &str,
    shape: &Shape,
    norm_groups: usize,
    max_binding: u64,
) -> Result<Vec<ChunkSpec>, PlanError> {
    let total = shape.bytes();
    let (n, axis, unit_bytes, group) = match *shape {
        Shape::Nchw { n, c, h, w } => (
            n,
            c,
            (h as u64)
                .saturating_mul(w as u64)
                .saturating_mul(ACTIVATION_BYTES),
            chunk_group_size(c, norm_groups),
        ),
        Shape::Tokens { n, l, d } => (n, l, (d as u64).saturating_mul(ACTIVATION_BYTES), 1),
        Shape::Flat { len } => (1, len, ACTIVATION_BYTES, 1),
    };
    if total <= max_binding {
        return Ok(vec![ChunkSpec {
            item: None,
            start: 0,
            end: axis,
            bytes: total,
        }]);
    }
    let rename = |e: PlanError| match e {
        PlanError::Limit {
            name: what,
            needed,
            max,
        } => PlanError::Limit {
            name: format!("{name} ({what} of {shape})"),
            needed,
            max,
        },
        other => other,
    };
    let per_chunk = match shape {
        Shape::Nchw { .. } => {
            channel_chunk(axis, group, unit_bytes, max_binding).map_err(rename)?
        }
        Shape::Tokens { .. } => row_chunk(axis, unit_bytes, max_binding).map_err(rename)?,
        Shape::Flat { .. } => {
            return Err(PlanError::Limit {
                name: name.to_owned(),
                needed: total,
                max: max_binding,
            });
        }
    };
    let mut chunks = Vec::new();
    for item in 0..n {
        let mut start = 0;
        while start < axis {
            let end = (start + per_chunk).min(axis);
            chunks.push(ChunkSpec {
                item: Some(item),
                start,
                end,
                bytes: ((end - start) as u64).saturating_mul(unit_bytes),
            });
            start = end;
        }
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn channel_chunks_hold_whole_groups_and_fit() -> Result<(), PlanError> {
        // SD's VAE decoder at 768x768: 128 channels (groups of 4) of 2.25 MiB each.
        let per_channel = 768 * 768 * 4;
        let chunk = channel_chunk(128, 4, per_channel, 128 * MIB)?;
        assert!(chunk.is_multiple_of(4));
        assert!(chunk as u64 * per_channel <= 128 * MIB);
        assert_eq!(
            chunk, 44,
            "3 chunks as even as whole groups allow: 44, 44, 40"
        );
        // Everything fits: one chunk.
        assert_eq!(channel_chunk(320, 10, 64 * 64 * 4, 128 * MIB)?, 320);
        // 256 channels at 512x512 (exactly 256 MiB): two chunks of exactly 128 MiB.
        assert_eq!(channel_chunk(256, 8, 512 * 512 * 4, 128 * MIB)?, 128);
        Ok(())
    }

    #[test]
    fn a_group_too_large_is_a_limit_error() {
        let error = channel_chunk(256, 8, MIB, 4 * MIB);
        assert!(
            matches!(error, Err(PlanError::Limit { needed, max, .. }) if needed == 8 * MIB && max == 4 * MIB),
            "{error:?}"
        );
        assert!(matches!(
            channel_chunk(100, 3, 4, MIB),
            Err(PlanError::Architecture { .. })
        ));
    }

    #[test]
    fn layouts_split_per_item_then_along_the_axis() -> Result<(), PlanError> {
        let shape = Shape::Nchw {
            n: 1,
            c: 256,
            h: 512,
            w: 512,
        };
        let chunks = chunk_layout("t", &shape, 32, 128 * MIB)?;
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            (chunks[1].item, chunks[1].start, chunks[1].end),
            (Some(0), 128, 256)
        );
        assert_eq!(chunks.iter().map(|c| c.bytes).sum::<u64>(), shape.bytes());

        // GEGLU hidden states of the SD 1.5 UNet at 768x768 with CFG: 188.7 MB, one chunk per item.
        let shape = Shape::Tokens {
            n: 2,
            l: 96 * 96,
            d: 2560,
        };
        let chunks = chunk_layout("t", &shape, 32, 128 * MIB)?;
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.start == 0 && c.end == 96 * 96));

        let small = Shape::Nchw {
            n: 2,
            c: 320,
            h: 64,
            w: 64,
        };
        let chunks = chunk_layout("t", &small, 32, 128 * MIB)?;
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].item, None);
        Ok(())
    }

    #[test]
    fn layout_errors_name_the_tensor() {
        let shape = Shape::Nchw {
            n: 1,
            c: 256,
            h: 512,
            w: 512,
        };
        match chunk_layout("vae.decoder.x", &shape, 32, MIB) {
            Err(PlanError::Limit { name, .. }) => {
                assert!(name.starts_with("vae.decoder.x"), "{name}")
            }
            other => panic!("expected a limit error, got {other:?}"),
        }
    }
}
