//! The Karras et al. (2022) noise levels and diffusers' mapping from a sigma back to a
//! (fractional) training timestep.
//!
//! Mirrors `_convert_to_karras` and `_sigma_to_t` of diffusers 0.42
//! (`diffusers/schedulers/scheduling_euler_discrete.py`, copied into
//! `scheduling_dpmsolver_multistep.py`): float64 numpy code over the float32 table of training
//! sigmas, whose logarithm numpy keeps in float32.

use alloc::vec::Vec;

use super::{linspace, round_f32};

/// The `rho` of the Karras schedule (7, the value of the paper, fixed in diffusers).
pub const KARRAS_RHO: f64 = 7.0;

/// `steps` Karras sigmas from `sigma_max` down to `sigma_min`, evenly spaced in
/// `sigma ** (1 / rho)`: `(max ** (1/rho) + ramp * (min ** (1/rho) - max ** (1/rho))) ** rho` with
/// `ramp = np.linspace(0, 1, steps)`. float64, not yet rounded (diffusers rounds the final sigma
/// array to float32).
///
/// Which `sigma_min` and `sigma_max` differs by scheduler: Euler takes the first and last of its
/// interpolated sigmas at the spaced timesteps, DPM-Solver the whole training range.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let min_inv_rho = libm::pow(sigma_min, 1.0 / KARRAS_RHO);
    let max_inv_rho = libm::pow(sigma_max, 1.0 / KARRAS_RHO);
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| libm::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), KARRAS_RHO))
        .collect()
}

/// `np.log(sigmas)` of the float32 training sigmas ([`super::train_sigmas`]): float32
/// logarithms, computed like numpy's float32 `log` ([`numpy_log_f32`]).
pub fn log_sigmas(train_sigmas: &[f64]) -> Vec<f64> {
    train_sigmas
        .iter()
        .map(|&s| f64::from(numpy_log_f32(s as f32)))
        .collect()
}

/// numpy's float32 `np.log` on x86-64 (the AVX2/AVX512F kernel `simd_log_FLOAT` of
/// `numpy/_core/src/umath/loops_exponent_log.dispatch.c.src`), which is not correctly rounded
/// (up to 3.83 ulp): `x = m * 2^e` with `m` in `(sqrt(1/2), sqrt(2)]`, then
/// `e * ln 2 + P(m - 1) / Q(m - 1)` with fused multiply-adds and numpy's degree-5 Remez
/// coefficients. diffusers' Karras timesteps interpolate in these values, and a one-ulp
/// difference in a logarithm moves a timestep by about one float32 ulp.
///
/// For positive normal `x`; 0 gives minus infinity, and negative, subnormal or non-finite `x`
/// fall back to `libm::logf`.
pub fn numpy_log_f32(x: f32) -> f32 {
    // NPY_COEFF_{P,Q}{0..5}_LOGf of numpy's npy_simd_data.h, as written there (C rounds
    // them to float32 as Rust does).
    #[allow(clippy::excessive_precision)]
    const P: [f32; 6] = [
        0.0,
        9.999_999_999_999_998e-1,
        2.112_677_543_073_053,
        1.480_000_633_576_506_6,
        3.808_837_741_388_408e-1,
        2.589_979_117_907_922_7e-2,
    ];
    #[allow(clippy::excessive_precision)]
    const Q: [f32; 6] = [
        1.0,
        2.612_677_543_073_109,
        2.453_006_071_784_736_4,
        9.864_942_958_519_419e-1,
        1.546_476_374_983_906_7e-1,
        5.875_095_403_124_574e-3,
    ];
    if !(x.is_finite() && x >= f32::MIN_POSITIVE) {
        return libm::logf(x);
    }
    let bits = x.to_bits();
    // Exponent and mantissa with the mantissa in [0.5, 1).
    let mut exponent = ((bits >> 23) as i32 - 126) as f32;
    let mut mantissa = f32::from_bits((bits & 0x007F_FFFF) | 0x3F00_0000);
    if mantissa <= core::f32::consts::FRAC_1_SQRT_2 {
        mantissa += mantissa;
        exponent -= 1.0;
    }
    let y = mantissa - 1.0;
    let num = P[..5]
        .iter()
        .rev()
        .fold(P[5], |acc, &p| libm::fmaf(acc, y, p));
    let den = Q[..5]
        .iter()
        .rev()
        .fold(Q[5], |acc, &q| libm::fmaf(acc, y, q));
    libm::fmaf(exponent, core::f32::consts::LN_2, num / den)
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is `sigma`, by linear
/// interpolation in log sigma between the two neighbouring training timesteps.
///
/// `low` is the last training timestep whose log sigma is at most `log(max(sigma, 1e-10))` (0 if
/// there is none), capped at `len - 2`; the weight `w = (log_sigmas[low] - log_sigma) /
/// (log_sigmas[low] - log_sigmas[low + 1])` (the denominator a float32 difference) is clipped
/// to `[0, 1]` and `t = (1 - w) * low + w * (low + 1)`. With fewer than two `log_sigmas` the
/// result is 0.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    if log_sigmas.len() < 2 {
        return 0.0;
    }
    let log_sigma = libm::log(sigma.max(1e-10));
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = (low - log_sigma) / round_f32(low - high);
    // np.clip keeps NaN.
    let w = if w.is_nan() { w } else { w.clamp(0.0, 1.0) };
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// diffusers' `_sigma_to_t` as KDPM2 and KDPM2 ancestral call it for their interpolated
/// sigmas: `sigma` is a float32 torch value and `log_sigmas` a float32 torch tensor, so every
/// operation runs in float32 (`log(max(sigma, 1e-10))` by numpy's float32 `log`
/// ([`numpy_log_f32`]), then torch's float32 differences, `w` clipped to `[0, 1]` and
/// `t = (1 - w) * low + w * (low + 1)`). `log_sigmas` are [`log_sigmas`] as float32. With
/// fewer than two `log_sigmas` the result is 0.
pub fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    if log_sigmas.len() < 2 {
        return 0.0;
    }
    let log_sigma = numpy_log_f32(sigma.max(1e-10));
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = (low - log_sigma) / (low - high);
    let w = if w.is_nan() { w } else { w.clamp(0.0, 1.0) };
    (1.0 - w) * low_idx as f32 + w * high_idx as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karras_runs_from_max_to_min() {
        let s = karras_sigmas(0.03, 14.6, 5);
        assert!((s[0] - 14.6).abs() < 1e-12);
        assert!((s[4] - 0.03).abs() < 1e-12);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn numpy_log_is_within_four_ulps() {
        for x in [
            0.029_f32,
            0.5,
            0.707_106_77,
            1.0,
            1.5,
            2.0,
            14.6,
            1e-30,
            3e20,
        ] {
            let ours = numpy_log_f32(x);
            let exact = libm::log(f64::from(x));
            let ulp = f64::from(f32::EPSILON) * exact.abs().max(f64::from(f32::MIN_POSITIVE));
            assert!(
                (f64::from(ours) - exact).abs() <= 4.0 * ulp,
                "{x}: {ours} vs {exact}"
            );
        }
        assert_eq!(numpy_log_f32(1.0), 0.0);
        assert_eq!(numpy_log_f32(0.0), f32::NEG_INFINITY);
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let sigmas = [0.1, 0.2, 0.4, 0.8];
        let logs = log_sigmas(&sigmas);
        assert!((sigma_to_t(0.2, &logs) - 1.0).abs() < 1e-6);
        assert!((sigma_to_t(libm::sqrt(0.08), &logs) - 1.5).abs() < 1e-6);
        // Outside the table: clipped to its ends.
        assert_eq!(sigma_to_t(0.01, &logs), 0.0);
        assert_eq!(sigma_to_t(5.0, &logs), 3.0);
    }
}
