//! Comparing a GPU result with a reference: every element, NaN- and inf-aware, with a report
//! that says how many elements are off, the worst one and where.

use std::fmt;

/// An element passes when `|got - want| <= abs + rel * |want|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    /// f32 arithmetic with f32 inputs.
    pub const F32: Self = Self {
        abs: 1e-5,
        rel: 1e-5,
    };
    /// Inputs or weights rounded through f16 storage.
    pub const F16: Self = Self {
        abs: 1e-3,
        rel: 1e-3,
    };
}

/// Why a comparison failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub label: String,
    /// Elements outside the tolerance (NaN and inf included).
    pub count: usize,
    pub total: usize,
    /// Index of the worst element, its values and error.
    pub index: usize,
    pub got: f32,
    pub want: f32,
    pub error: f32,
    /// A length mismatch, when that is the problem.
    pub lengths: Option<(usize, usize)>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((got, want)) = self.lengths {
            return write!(f, "{}: {got} values, expected {want}", self.label);
        }
        write!(
            f,
            "{}: {} of {} elements out of tolerance; worst at index {}: got {}, want {} (error {:e})",
            self.label, self.count, self.total, self.index, self.got, self.want, self.error
        )
    }
}

impl std::error::Error for Mismatch {}

/// Compares `got` with `want` element by element.
pub fn compare(label: &str, got: &[f32], want: &[f32], tol: Tolerance) -> Result<(), Mismatch> {
    let mut report = Mismatch {
        label: label.to_string(),
        count: 0,
        total: want.len(),
        index: 0,
        got: 0.0,
        want: 0.0,
        error: 0.0,
        lengths: None,
    };
    if got.len() != want.len() {
        report.lengths = Some((got.len(), want.len()));
        return Err(report);
    }
    let mut worst = -1.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = if g.is_finite() && w.is_finite() {
            (g - w).abs()
        } else if g == w || (g.is_nan() && w.is_nan()) {
            0.0
        } else {
            f32::INFINITY
        };
        // Normalise by the allowed error so "worst" means "furthest past its own bound".
        let bound = tol.abs + tol.rel * if w.is_finite() { w.abs() } else { 0.0 };
        // Neither is NaN here: non-finite pairs were mapped to 0 or inf above.
        if error > bound {
            report.count += 1;
        }
        let badness = error / bound;
        if badness > worst {
            worst = badness;
            report.index = i;
            report.got = g;
            report.want = w;
            report.error = error;
        }
    }
    if report.count == 0 {
        Ok(())
    } else {
        Err(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_count_worst_and_index() {
        let want = [1.0, 2.0, 3.0, 4.0];
        assert!(compare("same", &want, &want, Tolerance::F32).is_ok());
        let got = [1.0, 2.5, f32::NAN, 4.0];
        let err = compare("bad", &got, &want, Tolerance::F32).expect_err("two elements are off");
        assert_eq!(err.count, 2);
        assert_eq!(err.index, 2, "NaN is the worst element");
        assert!(err.to_string().contains("2 of 4"));
        let nan_wanted = compare("nan", &[1.0], &[f32::NAN], Tolerance::F32);
        assert!(
            nan_wanted.is_err(),
            "a finite value where NaN is expected fails"
        );
        let short = compare("short", &got[..2], &want, Tolerance::F32).expect_err("length");
        assert_eq!(short.lengths, Some((2, 4)));
    }
}
