//! The noise-schedule arithmetic that every sampler shares, on plain `f64` slices: betas and
//! `alphas_cumprod` ([`mod@betas`]), the placement of inference timesteps ([`spacing`]) and the
//! Karras et al. sigmas with diffusers' sigma-to-timestep mapping ([`karras`]).
//!
//! Mirrors the `__init__` and `set_timesteps` code that diffusers 0.42 repeats in each scheduler
//! (`diffusers/schedulers/scheduling_euler_discrete.py`, `scheduling_ddim.py`,
//! `scheduling_dpmsolver_multistep.py`), written once here.
//!
//! **Rounding.** diffusers computes the training schedule with float32 torch tensors and the
//! inference schedule with float64 numpy arrays that it casts back to float32. The values here
//! are `f64`s, but wherever diffusers rounds to float32 they are rounded to float32 too (with
//! [`round_f32`]), so a schedule equals diffusers' to the last bit of float32 rather than being
//! "more exact" and a few float32 ulps away. For `+ - * /` and `sqrt`, computing in `f64` and
//! rounding once gives exactly the float32 result, which is what makes that emulation exact.

use alloc::vec::Vec;

pub mod betas;
pub mod karras;
pub mod spacing;

pub use betas::{alphas_cumprod, betas, rescale_zero_terminal_snr, train_sigmas};
pub use karras::{karras_sigmas, log_sigmas, sigma_to_t, sigma_to_t_f32};
pub use spacing::{check_steps, timesteps, timesteps_dpm_solver};

/// A schedule that cannot be built from the configuration and step count given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// Zero inference steps were asked for.
    #[error("the number of steps must be at least 1")]
    NoSteps,
    /// More inference steps than training timesteps.
    #[error(
        "{steps} steps were asked for, but the model was trained with only {num_train_timesteps} timesteps (at most that many steps)"
    )]
    TooManySteps {
        /// The steps asked for.
        steps: usize,
        /// The config's `num_train_timesteps`.
        num_train_timesteps: usize,
    },
    /// The config's `num_train_timesteps` is too small for a schedule.
    #[error("`num_train_timesteps` is {0}; a schedule needs at least 2")]
    TooFewTrainTimesteps(usize),
    /// The config's `num_train_timesteps` is past [`betas::MAX_TRAIN_TIMESTEPS`].
    #[error("`num_train_timesteps` is {0}; at most 100000 are read (published models have 1000)")]
    TooManyTrainTimesteps(usize),
    /// `trained_betas` has a different length than `num_train_timesteps`.
    #[error("`trained_betas` has {found} values but `num_train_timesteps` is {expected}")]
    TrainedBetasLength {
        /// `num_train_timesteps`.
        expected: usize,
        /// The number of betas given.
        found: usize,
    },
    /// A beta is not a finite number in `[0, 1)`.
    #[error("beta {index} is {value}; betas must be finite and in [0, 1)")]
    BadBeta {
        /// The training timestep of the beta.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// numpy's `arange` for `trailing` spacing gives a different count than asked for (a
    /// float-rounding corner that diffusers would run with; we refuse it instead).
    #[error(
        "`trailing` spacing of {num_train_timesteps} training timesteps gives {found} timesteps for {steps} steps"
    )]
    TrailingCount {
        /// The steps asked for.
        steps: usize,
        /// The config's `num_train_timesteps`.
        num_train_timesteps: usize,
        /// The number of timesteps numpy's `arange` produces.
        found: usize,
    },
}

/// `x` rounded to the nearest float32, as an `f64`: what storing a value in a float32 tensor or
/// `astype(np.float32)` does.
#[inline]
pub fn round_f32(x: f64) -> f64 {
    x as f32 as f64
}

/// numpy's `np.linspace(start, stop, num)` in float64, endpoint included: `start + i * step`
/// with `step = (stop - start) / (num - 1)`, and the last value exactly `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return alloc::vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// numpy's `np.interp(x, xp, fp)` for `xp = 0, 1, ..., fp.len() - 1` (how diffusers reads a
/// training-schedule table at fractional timesteps): linear interpolation in float64, `fp[0]`
/// left of the table, the last value right of it, and the table value itself at a whole `x`.
pub fn interp(x: f64, fp: &[f64]) -> f64 {
    let (Some(&first), Some(&last)) = (fp.first(), fp.last()) else {
        return f64::NAN;
    };
    if x.is_nan() {
        return f64::NAN;
    }
    let top = (fp.len() - 1) as f64;
    if x <= 0.0 {
        return first;
    }
    if x >= top {
        return last;
    }
    // 0 < x < top, so the floor indexes a value with a successor.
    let j = libm::floor(x) as usize;
    let xj = j as f64;
    if xj == x {
        return fp[j];
    }
    // numpy divides by `xp[j + 1] - xp[j]`, which is 1 here.
    let slope = fp[j + 1] - fp[j];
    slope * (x - xj) + fp[j]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(linspace(0.0, 999.0, 1), alloc::vec![0.0]);
        assert_eq!(linspace(0.0, 1.0, 3), alloc::vec![0.0, 0.5, 1.0]);
        let v = linspace(0.0, 999.0, 7);
        assert_eq!(v[6], 999.0);
        assert_eq!(v[1], 999.0 / 6.0);
    }

    #[test]
    fn interp_at_whole_and_fractional_points() {
        let fp = [1.0, 3.0, 7.0];
        assert_eq!(interp(-1.0, &fp), 1.0);
        assert_eq!(interp(0.0, &fp), 1.0);
        assert_eq!(interp(1.0, &fp), 3.0);
        assert_eq!(interp(1.5, &fp), 5.0);
        assert_eq!(interp(2.0, &fp), 7.0);
        assert_eq!(interp(9.0, &fp), 7.0);
        assert!(interp(0.5, &[]).is_nan());
    }
}
