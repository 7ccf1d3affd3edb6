//! Where the inference timesteps fall among the training timesteps (`timestep_spacing`).
//!
//! Mirrors the spacing branches of `set_timesteps` in diffusers 0.42: the same numpy
//! expressions in `diffusers/schedulers/scheduling_euler_discrete.py`,
//! `scheduling_euler_ancestral_discrete.py` and `scheduling_ddim.py` ([`timesteps`]), and the
//! variant of `scheduling_dpmsolver_multistep.py`, which places `steps + 1` points and drops
//! the last ([`timesteps_dpm_solver`]).
//!
//! numpy semantics that matter: `arange` with a float step computes `start + i * delta` with
//! `delta = (start + step) - start`, its length is `ceil((stop - start) / step)`, and `round`
//! rounds halves to even (`937.5 -> 938`, `62.5 -> 62`).

use alloc::vec::Vec;

use super::{ScheduleError, linspace};
use crate::config::TimestepSpacing;

/// The inference timesteps of Euler, Euler ancestral and DDIM, descending, one per step.
///
/// - `linspace`: `np.linspace(0, T - 1, steps)` reversed, **not rounded**: Euler casts these
///   to float32 and keeps the fractions, DDIM rounds them half-to-even.
/// - `leading`: `(T // steps) * i + steps_offset` for `i = steps - 1, ..., 0`.
/// - `trailing`: `round(np.arange(T, 0, -T / steps)) - 1`.
///
/// `steps_offset` only shifts `leading` (as in diffusers).
///
/// # Errors
///
/// [`ScheduleError::NoSteps`] for 0 steps, [`ScheduleError::TooManySteps`] for more steps than
/// training timesteps and [`ScheduleError::TrailingCount`] where numpy's `arange` would give
/// another count than `steps`.
pub fn timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    steps: usize,
    steps_offset: usize,
) -> Result<Vec<f64>, ScheduleError> {
    check_steps(num_train_timesteps, steps)?;
    Ok(match spacing {
        TimestepSpacing::Linspace => {
            let mut values = linspace(0.0, (num_train_timesteps - 1) as f64, steps);
            values.reverse();
            values
        }
        TimestepSpacing::Leading => {
            let ratio = num_train_timesteps / steps;
            (0..steps)
                .rev()
                // In f64: a huge `steps_offset` gives timesteps out of range (refused by the
                // samplers), not an overflow.
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(num_train_timesteps, steps)?,
    })
}

/// The inference timesteps of `DPMSolverMultistepScheduler`, descending, one per step, whole
/// numbers (diffusers stores them as int64):
///
/// - `linspace`: `round(np.linspace(0, T - 1, steps + 1))` reversed, the last (0) dropped.
/// - `leading`: `(T // (steps + 1)) * i + steps_offset` for `i = steps, ..., 1`.
/// - `trailing`: as in [`timesteps`].
///
/// (`T` is diffusers' `last_timestep`, which is `num_train_timesteps` at the default
/// `lambda_min_clipped` of minus infinity.)
///
/// # Errors
///
/// As [`timesteps`].
pub fn timesteps_dpm_solver(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    steps: usize,
    steps_offset: usize,
) -> Result<Vec<f64>, ScheduleError> {
    check_steps(num_train_timesteps, steps)?;
    Ok(match spacing {
        TimestepSpacing::Linspace => {
            let values = linspace(0.0, (num_train_timesteps - 1) as f64, steps + 1);
            values[1..].iter().rev().map(|&t| libm::rint(t)).collect()
        }
        TimestepSpacing::Leading => {
            let ratio = num_train_timesteps / (steps + 1);
            (1..=steps)
                .rev()
                // In f64: a huge `steps_offset` gives timesteps out of range (refused by the
                // samplers), not an overflow.
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(num_train_timesteps, steps)?,
    })
}

/// Checks a step count against the training timesteps: at least 1, at most
/// `num_train_timesteps`.
///
/// # Errors
///
/// [`ScheduleError::NoSteps`] and [`ScheduleError::TooManySteps`].
pub fn check_steps(num_train_timesteps: usize, steps: usize) -> Result<(), ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::NoSteps);
    }
    if steps > num_train_timesteps {
        return Err(ScheduleError::TooManySteps {
            steps,
            num_train_timesteps,
        });
    }
    Ok(())
}

/// `np.arange(T, 0, -T / steps).round() - 1`, with numpy's float `arange`.
///
/// For some step counts (61 of 1000 training timesteps, for one) numpy's length
/// `ceil(T / (T / steps))` rounds up to `steps + 1`, and the extra point, about 1e-13, becomes
/// timestep -1: diffusers would then run one step more than asked, at t = -1. We keep the
/// `steps` intended timesteps instead.
fn trailing(num_train_timesteps: usize, steps: usize) -> Result<Vec<f64>, ScheduleError> {
    let start = num_train_timesteps as f64;
    let step = -(start / steps as f64);
    let found = numpy_arange_len(start, 0.0, step);
    if found != steps && found != steps + 1 {
        return Err(ScheduleError::TrailingCount {
            steps,
            num_train_timesteps,
            found,
        });
    }
    let second = start + step;
    let delta = second - start;
    Ok((0..steps)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .map(|t| libm::rint(t) - 1.0)
        .collect())
}

/// The length of numpy's `np.arange(start, stop, step)` for floats: `ceil((stop - start) / step)`,
/// at least 0.
fn numpy_arange_len(start: f64, stop: f64, step: f64) -> usize {
    let len = libm::ceil((stop - start) / step);
    if len.is_finite() && len > 0.0 {
        len as usize
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_and_trailing_of_sd() -> Result<(), ScheduleError> {
        let leading = timesteps(TimestepSpacing::Leading, 1000, 20, 1)?;
        assert_eq!(leading.first(), Some(&951.0));
        assert_eq!(leading.last(), Some(&1.0));
        let trailing = timesteps(TimestepSpacing::Trailing, 1000, 20, 1)?;
        assert_eq!(trailing.first(), Some(&999.0));
        assert_eq!(trailing.last(), Some(&49.0));
        // 1000 / 16 = 62.5: numpy rounds halves to even.
        let t16 = timesteps(TimestepSpacing::Trailing, 1000, 16, 0)?;
        assert_eq!(t16[1], 937.0); // round(937.5) = 938
        assert_eq!(t16[15], 61.0); // round(62.5) = 62
        Ok(())
    }

    #[test]
    fn dpm_solver_places_steps_plus_one_points() -> Result<(), ScheduleError> {
        let leading = timesteps_dpm_solver(TimestepSpacing::Leading, 1000, 20, 1)?;
        assert_eq!(leading.first(), Some(&941.0));
        assert_eq!(leading.last(), Some(&48.0));
        let linspace = timesteps_dpm_solver(TimestepSpacing::Linspace, 1000, 20, 1)?;
        assert_eq!(linspace.first(), Some(&999.0));
        assert_eq!(linspace.last(), Some(&50.0)); // round(999 / 20 = 49.95)
        Ok(())
    }

    #[test]
    fn trailing_count_is_right_for_every_step_count() -> Result<(), ScheduleError> {
        for num_train in [1000, 999, 1024] {
            for steps in 1..=num_train {
                let t = timesteps(TimestepSpacing::Trailing, num_train, steps, 0)?;
                assert_eq!(t.len(), steps);
                assert_eq!(t[0], (num_train - 1) as f64);
                assert!(t.iter().all(|&t| t >= 0.0), "{steps}: {t:?}");
                assert!(t.windows(2).all(|w| w[0] > w[1]), "{steps}: {t:?}");
            }
        }
        // numpy's arange gives 62 points for 61 steps (the last at t = -1); we keep 61.
        let t61 = timesteps(TimestepSpacing::Trailing, 1000, 61, 0)?;
        assert_eq!(t61.last(), Some(&15.0));
        Ok(())
    }

    #[test]
    fn bad_step_counts() {
        assert_eq!(
            timesteps(TimestepSpacing::Leading, 1000, 0, 1),
            Err(ScheduleError::NoSteps)
        );
        assert!(matches!(
            timesteps_dpm_solver(TimestepSpacing::Linspace, 1000, 1001, 0),
            Err(ScheduleError::TooManySteps { .. })
        ));
    }
}
