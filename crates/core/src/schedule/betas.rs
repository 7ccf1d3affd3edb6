//! Betas, `alphas_cumprod` and the training sigmas of a scheduler config.
//!
//! Mirrors the `__init__` of diffusers' schedulers (identical in
//! `diffusers/schedulers/scheduling_euler_discrete.py`, `scheduling_ddim.py`,
//! `scheduling_dpmsolver_multistep.py`, ...), together with `betas_for_alpha_bar` and
//! `rescale_zero_terminal_snr` from `scheduling_ddpm.py` / `scheduling_ddim.py`.
//!
//! diffusers keeps betas and `alphas_cumprod` in float32 torch tensors, so every value here is
//! rounded to float32 where torch rounds it: `torch.linspace` in float32, `1 - beta` in
//! float32, and `torch.cumprod`, whose CPU kernel multiplies in float64 and stores float32.

use alloc::vec::Vec;

use super::{ScheduleError, round_f32};
use crate::config::{BetaSchedule, SchedulerConfig};

/// The betas of `config`: `trained_betas` when given, otherwise `beta_schedule` from
/// `beta_start` to `beta_end` over `num_train_timesteps`, as float32 values. `rescale_betas_zero_snr`
/// is applied by [`alphas_cumprod`], not here.
///
/// - `linear`: `torch.linspace(beta_start, beta_end, T, dtype=float32)`.
/// - `scaled_linear`: `torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=float32) ** 2`.
/// - `squaredcos_cap_v2`: `betas_for_alpha_bar(T)`, in float64 (`beta_i = min(1 - abar((i + 1) / T)
///   / abar(i / T), 0.999)` with `abar(t) = cos((t + 0.008) / 1.008 * pi / 2) ** 2`; the `i / T`
///   are float divisions), then rounded to float32.
///
/// # Errors
///
/// [`ScheduleError::TooFewTrainTimesteps`] below 2 training timesteps,
/// [`ScheduleError::TooManyTrainTimesteps`] past [`MAX_TRAIN_TIMESTEPS`],
/// [`ScheduleError::TrainedBetasLength`] when `trained_betas` has another length, and
/// [`ScheduleError::BadBeta`] for a beta that is not finite or not in `[0, 1)`.
/// The most training timesteps a config may name (every published model has 1000): a schedule
/// allocates a few values per training timestep.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

pub fn betas(config: &SchedulerConfig) -> Result<Vec<f64>, ScheduleError> {
    let count = config.num_train_timesteps;
    if count < 2 {
        return Err(ScheduleError::TooFewTrainTimesteps(count));
    }
    if count > MAX_TRAIN_TIMESTEPS {
        return Err(ScheduleError::TooManyTrainTimesteps(count));
    }
    let betas: Vec<f64> = match &config.trained_betas {
        Some(trained) => {
            if trained.len() != count {
                return Err(ScheduleError::TrainedBetasLength {
                    expected: count,
                    found: trained.len(),
                });
            }
            trained.iter().map(|&b| round_f32(b)).collect()
        }
        None => match config.beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, count),
            BetaSchedule::ScaledLinear => torch_linspace_f32(
                libm::sqrt(config.beta_start),
                libm::sqrt(config.beta_end),
                count,
            )
            .into_iter()
            .map(|x| round_f32(x * x))
            .collect(),
            BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(count),
        },
    };
    if let Some((index, &value)) = betas
        .iter()
        .enumerate()
        .find(|(_, b)| !(b.is_finite() && **b >= 0.0 && **b < 1.0))
    {
        return Err(ScheduleError::BadBeta { index, value });
    }
    Ok(betas)
}

/// `alphas_cumprod` of `config`: the cumulative products of `1 - beta` over the [`betas`], after
/// [`rescale_zero_terminal_snr`] when `rescale_betas_zero_snr` is set. float32 values, one per
/// training timestep.
///
/// The sigma-based samplers (Euler, Euler ancestral, DPM-Solver) additionally replace the last
/// value by [`ZERO_SNR_LAST_ALPHA_CUMPROD`] under `rescale_betas_zero_snr`, so their first sigma
/// is finite; DDIM does not.
///
/// # Errors
///
/// As [`betas`].
pub fn alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f64>, ScheduleError> {
    let mut betas = betas(config)?;
    if config.rescale_betas_zero_snr == Some(true) {
        betas = rescale_zero_terminal_snr(&betas);
    }
    Ok(cumprod_of_alphas(&betas))
}

/// What diffusers' sigma-based schedulers set the last `alphas_cumprod` to under
/// `rescale_betas_zero_snr` (float16's smallest subnormal, `2 ** -24`), so that the first sigma
/// is large but finite.
pub const ZERO_SNR_LAST_ALPHA_CUMPROD: f64 = 1.0 / 16_777_216.0;

/// The training sigmas `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, one per training
/// timestep (ascending with the timestep), computed in float32 like diffusers' torch expression.
pub fn train_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|&a| round_f32(libm::sqrt(round_f32(round_f32(1.0 - a) / a))))
        .collect()
}

/// Rescales betas to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and
/// Sample Steps are Flawed", algorithm 1), in float32 like diffusers' `rescale_zero_terminal_snr`:
/// the square roots of `alphas_cumprod` are shifted so the last is 0 and scaled so the first is
/// unchanged, then turned back into betas (the last beta becomes 1).
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let cumprod = cumprod_of_alphas(betas);
    let mut sqrt_bar: Vec<f64> = cumprod.iter().map(|&a| round_f32(libm::sqrt(a))).collect();
    let (Some(&first), Some(&last)) = (sqrt_bar.first(), sqrt_bar.last()) else {
        return Vec::new();
    };
    let scale = round_f32(first / round_f32(first - last));
    for s in &mut sqrt_bar {
        *s = round_f32(round_f32(*s - last) * scale);
    }
    let bar: Vec<f64> = sqrt_bar.iter().map(|&s| round_f32(s * s)).collect();
    let mut alphas = Vec::with_capacity(bar.len());
    alphas.push(bar[0]);
    alphas.extend(bar.windows(2).map(|w| round_f32(w[1] / w[0])));
    alphas.into_iter().map(|a| round_f32(1.0 - a)).collect()
}

/// `torch.cumprod(1.0 - betas)` on float32 tensors: `1 - beta` rounded to float32, products
/// accumulated in float64 (the CPU kernel's accumulator type for float32), each stored as float32.
fn cumprod_of_alphas(betas: &[f64]) -> Vec<f64> {
    let mut product = 1.0_f64;
    betas
        .iter()
        .map(|&b| {
            product *= round_f32(1.0 - b);
            round_f32(product)
        })
        .collect()
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU: the endpoints and the
/// step rounded to float32, the first half counted up from `start`, the second half down from
/// `end`, every operation in float32.
fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f64> {
    let start = round_f32(start);
    let end = round_f32(end);
    if steps == 1 {
        return alloc::vec![start];
    }
    let step = round_f32(round_f32(end - start) / round_f32((steps - 1) as f64));
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                round_f32(start + round_f32(step * round_f32(i as f64)))
            } else {
                round_f32(end - round_f32(step * round_f32((steps - i - 1) as f64)))
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar(T)` with the default cosine `alpha_bar` and `max_beta` 0.999,
/// in float64 (Python floats), then rounded to float32 like `torch.tensor(betas, float32)`.
fn betas_for_alpha_bar(count: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| {
        let c = libm::cos((t + 0.008) / 1.008 * core::f64::consts::PI / 2.0);
        c * c
    };
    (0..count)
        .map(|i| {
            let t1 = i as f64 / count as f64;
            let t2 = (i + 1) as f64 / count as f64;
            round_f32((1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_betas_use_float_division() {
        // With integer division (i / T == 0 for every i < T) every beta would be the same;
        // the cosine schedule grows and is capped at 0.999 at the end.
        let b = betas_for_alpha_bar(1000);
        assert!(b[0] < 1e-4, "{}", b[0]);
        assert!(b[500] > b[100]);
        assert_eq!(b[999], round_f32(0.999));
    }

    #[test]
    fn torch_linspace_has_exact_endpoints() {
        let v = torch_linspace_f32(0.1, 0.2, 5);
        assert_eq!(v[0], round_f32(0.1));
        assert_eq!(v[4], round_f32(0.2));
    }
}
