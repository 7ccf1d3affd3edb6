//! The CPU backend's memory budget: an estimate of candle's peak activations for a UNet call
//! and a VAE pass, checked before the run so that a size the machine cannot hold is refused
//! with the planner's error shape ([`PlanError::Limit`]) instead of ending in the OOM killer.
//!
//! candle materialises whole tensors: attention scores `[B x heads, hw, hw]` with their softmax,
//! and every ResNet's intermediate activations. The estimate counts the largest of those with
//! a margin; it is coarse on purpose (a few times the largest live tensors), not a plan.

use sd_core::config::{AutoencoderKLConfig, UNet2DConditionConfig};
use sd_core::params::VAE_SCALE;
use sd_models::plan::PlanError;

/// Bytes of an f32.
const F32: u64 = 4;

/// Live copies of the largest activation (input, output, norm, residual, candle's temporaries).
const ACTIVATION_COPIES: u64 = 8;

/// Live copies of the attention scores (scores, softmax, candle's contiguous copy).
const SCORE_COPIES: u64 = 3;

/// The memory the CPU backend may use for activations: `SD_CPU_MEMORY_BUDGET` (bytes, or with
/// a `K`/`M`/`G` suffix), else three quarters of what the system reports available (Linux's
/// `MemAvailable`), else 4 GiB.
pub fn budget() -> u64 {
    std::env::var("SD_CPU_MEMORY_BUDGET")
        .ok()
        .and_then(|v| parse_bytes(&v))
        .or_else(|| available_memory().map(|bytes| bytes / 4 * 3))
        .unwrap_or(4 << 30)
}

fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 1 << 10),
        (i, 'M' | 'm') => (&text[..i], 1 << 20),
        (i, 'G' | 'g') => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(unit)
}

fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The estimated peak activation bytes of one UNet call on `rows` latents at `width x height`.
pub fn unet_bytes(c: &UNet2DConditionConfig, width: u32, height: u32, rows: u64) -> u64 {
    let tokens = u64::from(width / VAE_SCALE) * u64::from(height / VAE_SCALE);
    let heads = c.heads_per_block();
    let mut peak = 0u64;
    let mut level_tokens = tokens;
    for (i, kind) in c.down_block_types.iter().enumerate() {
        let channels = c.block_out_channels[i] as u64;
        // Up blocks concatenate the skip connection: twice the channels.
        let activations = rows * 2 * channels * level_tokens * F32 * ACTIVATION_COPIES;
        let scores = if kind.starts_with("CrossAttn") {
            rows * heads[i] as u64 * level_tokens * level_tokens * F32 * SCORE_COPIES
        } else {
            0
        };
        peak = peak.max(activations + scores);
        level_tokens = level_tokens.div_ceil(4);
    }
    peak
}

/// The estimated peak activation bytes of a VAE pass (decoder or encoder) at `width x height`.
pub fn vae_bytes(c: &AutoencoderKLConfig, width: u32, height: u32) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    let full = c.block_out_channels.first().copied().unwrap_or(0) as u64;
    let activations = full * pixels * F32 * ACTIVATION_COPIES;
    // The mid block's single-head attention over the latent grid.
    let tokens = pixels / u64::from(VAE_SCALE * VAE_SCALE);
    let scores = tokens * tokens * F32 * SCORE_COPIES;
    activations.max(scores)
}

/// `Ok` when `needed` fits the budget; else the planner's error naming what does not.
pub fn check(name: impl Into<String>, needed: u64, budget: u64) -> Result<(), PlanError> {
    if needed <= budget {
        return Ok(());
    }
    Err(PlanError::Limit {
        name: name.into(),
        needed,
        max: budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_values_parse_with_units() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("3G"), Some(3 << 30));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("99999999999999999999G"), None);
    }

    #[test]
    fn over_budget_is_the_planners_limit_error() {
        assert!(check("x", 10, 10).is_ok());
        let err = check("unet", 11, 10).expect_err("over");
        assert!(matches!(
            err,
            PlanError::Limit {
                needed: 11,
                max: 10,
                ..
            }
        ));
    }
}
