use sd_kernels::ops::{self, GroupNormShape};
use sd_kernels::reference::{self, Tolerance};

use crate::common::*;

const TOL: Tolerance = Tolerance {
    abs: 1e-5,
    rel: 1e-5,
};

/// ([n, c, h, w], groups, silu): SD's 32 groups, few large groups (loops past the 256 threads),
/// odd spatial sizes, and one group longer than `FUSED_GROUP_NORM_MAX` (the two-pass path).
const CASES: [([usize; 4], usize, bool); 4] = [
    ([2, 64, 5, 7], 32, true),
    ([1, 6, 9, 11], 3, false),
    ([1, 8, 33, 31], 2, true),
    ([1, 4, 263, 257], 2, true),
];

#[test]
fn group_norm_matches_reference() {
    let ctx = native();
    for (case, &([n, c, h, w], groups, silu)) in CASES.iter().enumerate() {
        let mut rng = rng(300 + case as u64);
        // An offset mean, as real activations have: two-pass statistics must not lose it.
        let x: Vec<f32> = random(&mut rng, n * c * h * w, 2.0)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        let gamma = random(&mut rng, c, 1.5);
        let beta = random(&mut rng, c, 0.5);
        let (xg, gg, bg) = (
            upload(ctx, &x, &[n, c, h, w]),
            upload(ctx, &gamma, &[c]),
            upload(ctx, &beta, &[c]),
        );
        let y = poisoned(ctx, &[n, c, h, w]);
        let shape = GroupNormShape {
            groups,
            eps: 1e-5,
            silu,
            c_offset: 0,
        };
        let got = run(ctx, &y, |batch| {
            ops::group_norm(batch, &xg, &gg, &bg, &y, shape).expect("record")
        });
        let want = reference::group_norm(&x, [n, c, h * w], groups, &gamma, &beta, 1e-5, silu);
        assert_close(&format!("group_norm case {case}"), &got, &want, TOL);
    }
}

/// A chunk of whole groups normalised with `c_offset` equals that slice of the whole result.
#[test]
fn group_norm_of_a_channel_chunk_equals_the_slice() {
    let ctx = native();
    let mut rng = rng(310);
    let (n, c, hw, groups) = (2, 16, 10, 8);
    let x = random(&mut rng, n * c * hw, 1.0);
    let gamma = random(&mut rng, c, 1.0);
    let beta = random(&mut rng, c, 1.0);
    let whole = reference::group_norm(&x, [n, c, hw], groups, &gamma, &beta, 1e-6, true);
    let (lo, hi) = (6, 12); // groups 3..6
    let slice = |v: &[f32]| -> Vec<f32> {
        (0..n)
            .flat_map(|i| v[(i * c + lo) * hw..(i * c + hi) * hw].to_vec())
            .collect()
    };
    let xg = upload(ctx, &slice(&x), &[n, hi - lo, hw]);
    let (gg, bg) = (upload(ctx, &gamma, &[c]), upload(ctx, &beta, &[c]));
    let y = poisoned(ctx, &[n, hi - lo, hw]);
    let shape = GroupNormShape {
        groups: 3,
        eps: 1e-6,
        silu: true,
        c_offset: lo,
    };
    let got = run(ctx, &y, |batch| {
        ops::group_norm(batch, &xg, &gg, &bg, &y, shape).expect("record")
    });
    assert_close("group_norm chunk", &got, &slice(&whole), TOL);
}

/// The norm of `torch.cat([a, b], dim=1)` read in place equals the norm of the concatenation:
/// SD-like groups that straddle the two inputs (channels 0..6 and 6..16 in groups of 4), and a
/// group longer than `FUSED_GROUP_NORM_MAX` (the statistics + apply path).
#[test]
fn group_norm_of_a_concatenation_equals_the_norm_of_the_concatenated_tensor() {
    let ctx = native();
    for (case, &(n, ca, cb, hw, groups)) in [(2, 6, 10, 35, 4), (1, 1, 3, 131_075, 2)]
        .iter()
        .enumerate()
    {
        let mut rng = rng(320 + case as u64);
        let c = ca + cb;
        let a: Vec<f32> = random(&mut rng, n * ca * hw, 2.0)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let b = random(&mut rng, n * cb * hw, 1.0);
        let gamma = random(&mut rng, c, 1.5);
        let beta = random(&mut rng, c, 0.5);
        let cat = reference::concat_channels(&a, &b, n, ca, cb, hw);
        let want = reference::group_norm(&cat, [n, c, hw], groups, &gamma, &beta, 1e-5, true);
        let (ag, bg) = (upload(ctx, &a, &[n, ca, hw]), upload(ctx, &b, &[n, cb, hw]));
        let (gg, betag) = (upload(ctx, &gamma, &[c]), upload(ctx, &beta, &[c]));
        let y = poisoned(ctx, &[n, c, hw]);
        let shape = GroupNormShape {
            groups,
            eps: 1e-5,
            silu: true,
            c_offset: 0,
        };
        let got = run(ctx, &y, |batch| {
            ops::group_norm_of_concat(batch, [&ag, &bg], &gg, &betag, &y, shape).expect("record")
        });
        assert_close(
            &format!("group_norm of concat, case {case}"),
            &got,
            &want,
            TOL,
        );
    }
}

#[test]
fn group_norm_rejects_channels_that_do_not_split() {
    let ctx = native();
    let x = upload(ctx, &[1.0; 6 * 4], &[1, 6, 2, 2]);
    let g = upload(ctx, &[1.0; 6], &[6]);
    let y = poisoned(ctx, &[1, 6, 2, 2]);
    let mut batch = ctx.batch();
    let shape = GroupNormShape {
        groups: 4,
        eps: 1e-5,
        silu: false,
        c_offset: 0,
    };
    let err = ops::group_norm(&mut batch, &x, &g, &g, &y, shape).expect_err("6 channels, 4 groups");
    assert!(err.to_string().contains("4 groups"), "{err}");
}

#[test]
fn layer_norm_matches_reference() {
    let ctx = native();
    for (case, &(rows, dim)) in [(5usize, 64usize), (2 * 77, 300), (3, 1), (1, 1280)]
        .iter()
        .enumerate()
    {
        let mut rng = rng(320 + case as u64);
        let x: Vec<f32> = random(&mut rng, rows * dim, 2.0)
            .iter()
            .map(|v| v - 1.0)
            .collect();
        let gamma = random(&mut rng, dim, 1.5);
        let beta = random(&mut rng, dim, 0.5);
        let (xg, gg, bg) = (
            upload(ctx, &x, &[rows, dim]),
            upload(ctx, &gamma, &[dim]),
            upload(ctx, &beta, &[dim]),
        );
        let y = poisoned(ctx, &[rows, dim]);
        let got = run(ctx, &y, |batch| {
            ops::layer_norm(batch, &xg, &gg, &bg, &y, 1e-5).expect("record")
        });
        let want = reference::layer_norm(&x, dim, &gamma, &beta, 1e-5);
        assert_close(&format!("layer_norm {rows}x{dim}"), &got, &want, TOL);
    }
}
