use sd_kernels::ops::{self, Residual};
use sd_kernels::reference::{self, Tolerance};

use crate::common::*;

/// (leading dims of x, n, k): single element, sizes off the 64x64x16 tiles, a batched CLIP-like
/// projection, k not a multiple of 4; and the few-rows path (at most 8 rows: a CFG batch's time
/// embedding, k past one 128-deep step; exactly 8) beside 9 rows, which takes the tiles.
const CASES: [(&[usize], usize, usize); 7] = [
    (&[1], 1, 1),
    (&[67], 45, 37),
    (&[2, 77], 130, 67),
    (&[3, 43], 70, 129),
    (&[2, 1], 70, 300),
    (&[8], 131, 129),
    (&[9], 131, 129),
];

#[test]
fn linear_matches_reference_for_every_weight_variant() {
    for weights in ALL_WEIGHTS {
        for (case, &(lead, n, k)) in CASES.iter().enumerate() {
            let ctx = context_for(weights);
            let mut rng = rng(100 + case as u64);
            let rows: usize = lead.iter().product();
            let x = random(&mut rng, rows * k, 1.0);
            let w = random(&mut rng, n * k, 0.5);
            let b = random(&mut rng, n, 1.0);
            let (w_gpu, w_seen) = weight(ctx, weights, &w, &[n, k]);
            let mut x_shape = lead.to_vec();
            x_shape.push(k);
            let mut y_shape = lead.to_vec();
            y_shape.push(n);
            let x_gpu = upload(ctx, &x, &x_shape);
            let b_gpu = upload(ctx, &b, &[n]);
            for with_bias in [true, false] {
                let y = poisoned(ctx, &y_shape);
                let bias = with_bias.then_some(&b_gpu);
                let got = run(ctx, &y, |batch| {
                    ops::linear(batch, &x_gpu, &w_gpu, bias, &y).expect("record")
                });
                let want = reference::linear(&x, &w_seen, with_bias.then_some(&b[..]), rows, n, k);
                assert_close(
                    &format!("linear {weights:?} {lead:?}x{k} -> {n} bias {with_bias}"),
                    &got,
                    &want,
                    Tolerance {
                        abs: 2e-5,
                        rel: 1e-5,
                    },
                );
            }
        }
    }
}

/// The residual connection fused into the epilogue equals `linear` then `residual_add`:
/// `(x W^T + b + r) * factor`, on sizes off the tiles.
#[test]
fn linear_adds_a_residual_in_its_epilogue() {
    for rows in [70, 5] {
        linear_adds_a_residual(rows);
    }
}

/// The residual test on `rows` rows (few rows take `linear_few_rows`).
fn linear_adds_a_residual(rows: usize) {
    let ctx = context_for(Weights::F16Native);
    let mut rng = rng(150 + rows as u64);
    let (n, k) = (45, 37);
    let x = random(&mut rng, rows * k, 1.0);
    let w = random(&mut rng, n * k, 0.5);
    let b = random(&mut rng, n, 1.0);
    let r = random(&mut rng, rows * n, 1.0);
    let (w_gpu, w_seen) = weight(ctx, Weights::F16Native, &w, &[n, k]);
    let (x_gpu, b_gpu, r_gpu) = (
        upload(ctx, &x, &[rows, k]),
        upload(ctx, &b, &[n]),
        upload(ctx, &r, &[rows, n]),
    );
    let y = poisoned(ctx, &[rows, n]);
    let residual = Residual {
        tensor: &r_gpu,
        factor: 0.5,
    };
    let got = run(ctx, &y, |batch| {
        ops::linear_with_residual(batch, &x_gpu, &w_gpu, Some(&b_gpu), &y, Some(residual))
            .expect("record")
    });
    let want: Vec<f32> = reference::linear(&x, &w_seen, Some(&b), rows, n, k)
        .iter()
        .zip(&r)
        .map(|(v, r)| (v + r) * 0.5)
        .collect();
    let tol = Tolerance {
        abs: 2e-5,
        rel: 1e-5,
    };
    assert_close(
        &format!("linear with residual, {rows} rows"),
        &got,
        &want,
        tol,
    );
}

#[test]
fn linear_rejects_mismatched_shapes() {
    let ctx = native();
    let x = upload(ctx, &[0.5; 6], &[2, 3]);
    let w = upload(ctx, &[0.5; 8], &[2, 4]);
    let y = poisoned(ctx, &[2, 2]);
    let mut batch = ctx.batch();
    let err = ops::linear(&mut batch, &x, &w, None, &y).expect_err("k differs");
    assert!(err.to_string().contains("k = 4"), "{err}");
    assert!(batch.is_empty());
}

/// diffusers' `GEGLU` in the projection's epilogue: the weight and bias rows in (value, gate)
/// pairs (`geglu_pairs`) give `value * gelu(gate)` of the plain projection, for every weight
/// storage, with widths off the 64-wide tiles.
#[test]
fn linear_geglu_equals_the_projection_then_geglu() {
    for weights in ALL_WEIGHTS {
        let ctx = context_for(weights);
        let mut rng = rng(620);
        let (rows, k, d) = (37, 29, 35);
        let x = random(&mut rng, rows * k, 1.0);
        let wt = random(&mut rng, 2 * d * k, 0.5);
        let b = random(&mut rng, 2 * d, 0.5);
        let (w_gpu, w_seen) = weight(ctx, weights, &ops::geglu_pairs(&wt, 2 * d), &[2 * d, k]);
        let (xg, bg) = (
            upload(ctx, &x, &[rows, k]),
            upload(ctx, &ops::geglu_pairs(&b, 2 * d), &[2 * d]),
        );
        let y = poisoned(ctx, &[rows, d]);
        let got = run(ctx, &y, |batch| {
            ops::linear_geglu(batch, &xg, None, &w_gpu, Some(&bg), &y).expect("record")
        });
        // The reference runs on the unpaired rows (as rounded for this storage).
        let unpaired: Vec<f32> = (0..2 * d)
            .flat_map(|row| {
                let paired = if row < d { 2 * row } else { 2 * (row - d) + 1 };
                w_seen[paired * k..(paired + 1) * k].to_vec()
            })
            .collect();
        let projected = reference::linear(&x, &unpaired, Some(&b), rows, 2 * d, k);
        let want = reference::geglu(&projected, d);
        let tol = Tolerance {
            abs: 2e-5,
            rel: 1e-5,
        };
        assert_close(&format!("linear_geglu {weights:?}"), &got, &want, tol);
    }
}

/// `nn.LayerNorm` fused into the projection's loads equals layer norm then linear, plain and
/// with the GEGLU epilogue; rows carry an offset mean (two-pass statistics must keep it) and
/// widths are off the tiles and the 32-deep K steps.
#[test]
fn linear_with_a_layer_norm_on_its_input_matches_the_two_passes() {
    for weights in ALL_WEIGHTS {
        let ctx = context_for(weights);
        let mut rng = rng(640);
        let (rows, k, n) = (70, 45, 38);
        let x: Vec<f32> = random(&mut rng, rows * k, 2.0)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        let gamma = random(&mut rng, k, 1.5);
        let beta = random(&mut rng, k, 0.5);
        let wt = random(&mut rng, n * k, 0.5);
        let b = random(&mut rng, n, 0.5);
        let (w_gpu, w_seen) = weight(ctx, weights, &wt, &[n, k]);
        let (paired_gpu, paired_seen) = weight(ctx, weights, &ops::geglu_pairs(&wt, n), &[n, k]);
        let xg = upload(ctx, &x, &[rows, k]);
        let (gg, betag) = (upload(ctx, &gamma, &[k]), upload(ctx, &beta, &[k]));
        let bg = upload(ctx, &b, &[n]);
        let paired_b = upload(ctx, &ops::geglu_pairs(&b, n), &[n]);
        let norm = ops::InputLayerNorm {
            gamma: &gg,
            beta: &betag,
            eps: 1e-5,
        };
        let normed = reference::layer_norm(&x, k, &gamma, &beta, 1e-5);
        let tol = Tolerance {
            abs: 5e-5,
            rel: 2e-5,
        };

        let y = poisoned(ctx, &[rows, n]);
        let got = run(ctx, &y, |batch| {
            ops::linear_with_layer_norm(batch, &xg, norm, &w_gpu, Some(&bg), &y).expect("record")
        });
        let want = reference::linear(&normed, &w_seen, Some(&b), rows, n, k);
        assert_close(
            &format!("layer norm + linear {weights:?}"),
            &got,
            &want,
            tol,
        );

        let y = poisoned(ctx, &[rows, n / 2]);
        let got = run(ctx, &y, |batch| {
            ops::linear_geglu(batch, &xg, Some(norm), &paired_gpu, Some(&paired_b), &y)
                .expect("record")
        });
        let unpaired: Vec<f32> = (0..n)
            .flat_map(|row| {
                let paired = if row < n / 2 {
                    2 * row
                } else {
                    2 * (row - n / 2) + 1
                };
                paired_seen[paired * k..(paired + 1) * k].to_vec()
            })
            .collect();
        let projected = reference::linear(&normed, &unpaired, Some(&b), rows, n, k);
        let want = reference::geglu(&projected, n / 2);
        assert_close(&format!("layer norm + GEGLU {weights:?}"), &got, &want, tol);
    }
}
