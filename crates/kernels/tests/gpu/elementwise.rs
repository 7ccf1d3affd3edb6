use sd_kernels::DType;
use sd_kernels::ops::{self, Activation};
use sd_kernels::reference::{self, Tolerance};

use crate::common::*;

const TOL: Tolerance = Tolerance {
    abs: 1e-6,
    rel: 2e-6,
};

#[test]
fn activations_match_reference() {
    let ctx = native();
    let mut rng = rng(500);
    // Wide range: both tails of GELU and SiLU, and values far past tanh's overflow.
    let mut x = random(&mut rng, 1000, 12.0);
    x.extend([0.0, -0.0, 50.0, -50.0, 100.0, -100.0, 1e-7]);
    let xg = upload(ctx, &x, &[x.len()]);
    type Reference = fn(f32) -> f32;
    let cases: [(Activation, Reference); 4] = [
        (Activation::Silu, reference::silu),
        (Activation::Gelu, reference::gelu),
        (Activation::GeluTanh, reference::gelu_tanh),
        (Activation::QuickGelu, reference::quick_gelu),
    ];
    for (f, cpu) in cases {
        let y = poisoned(ctx, &[x.len()]);
        let got = run(ctx, &y, |b| ops::activation(b, f, &xg, &y).expect("record"));
        let want: Vec<f32> = x.iter().map(|&v| cpu(v)).collect();
        assert_close(&format!("{f:?}"), &got, &want, TOL);
    }
}

#[test]
fn arithmetic_matches_reference() {
    let ctx = native();
    let mut rng = rng(502);
    let (n, c, h, w) = (2, 5, 7, 3);
    let len = n * c * h * w;
    let a = random(&mut rng, len, 2.0);
    let b = random(&mut rng, len, 2.0);
    let (ag, bg) = (
        upload(ctx, &a, &[n, c, h, w]),
        upload(ctx, &b, &[n, c, h, w]),
    );

    let y = poisoned(ctx, &[n, c, h, w]);
    let got = run(ctx, &y, |bt| ops::add(bt, &ag, &bg, &y).expect("record"));
    assert_close(
        "add",
        &got,
        &a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>(),
        TOL,
    );

    let got = run(ctx, &y, |bt| ops::mul(bt, &ag, &bg, &y).expect("record"));
    assert_close(
        "mul",
        &got,
        &a.iter().zip(&b).map(|(x, y)| x * y).collect::<Vec<_>>(),
        TOL,
    );

    let got = run(ctx, &y, |bt| {
        ops::scale(bt, &ag, 0.18215, &y).expect("record")
    });
    assert_close(
        "scale",
        &got,
        &a.iter().map(|x| x * 0.18215).collect::<Vec<_>>(),
        TOL,
    );

    // In place: y holds b, then y = (y + a) * 0.5.
    let yb = upload(ctx, &b, &[n, c, h, w]);
    let got = run(ctx, &yb, |bt| {
        ops::residual_add(bt, &ag, &yb, 0.5).expect("record")
    });
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (y + x) * 0.5).collect();
    assert_close("residual_add", &got, &want, TOL);
}

#[test]
fn upsample_concat_and_layouts_match_reference() {
    let ctx = native();
    let mut rng = rng(503);
    let (n, ca, cb, h, w) = (2, 3, 5, 7, 9);
    let a = random(&mut rng, n * ca * h * w, 1.0);
    let b = random(&mut rng, n * cb * h * w, 1.0);
    let (ag, bg) = (
        upload(ctx, &a, &[n, ca, h, w]),
        upload(ctx, &b, &[n, cb, h, w]),
    );

    for (oh, ow) in [(2 * h, 2 * w), (2 * h - 1, 2 * w + 1)] {
        let up = poisoned(ctx, &[n, ca, oh, ow]);
        let got = run(ctx, &up, |bt| {
            ops::upsample_nearest(bt, &ag, &up).expect("record")
        });
        let want = reference::upsample_nearest(&a, n * ca, (h, w), (oh, ow));
        assert_close(&format!("upsample to {oh}x{ow}"), &got, &want, TOL);
    }
    // 2x is exactly "each pixel twice in each direction".
    let twice = reference::upsample_nearest(&[1.0, 2.0], 1, (1, 2), (2, 4));
    assert_eq!(twice, [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);

    let cat = poisoned(ctx, &[n, ca + cb, h, w]);
    let got = run(ctx, &cat, |bt| {
        ops::concat_channels(bt, &ag, &bg, &cat).expect("record")
    });
    assert_close(
        "concat",
        &got,
        &reference::concat_channels(&a, &b, n, ca, cb, h * w),
        TOL,
    );

    let nlc = poisoned(ctx, &[n, h * w, cb]);
    let got = run(ctx, &nlc, |bt| {
        ops::layout_nchw_to_nlc(bt, &bg, &nlc).expect("record")
    });
    let want = reference::transpose_last2(&b, n, cb, h * w);
    assert_close("nchw_to_nlc", &got, &want, TOL);

    let back = poisoned(ctx, &[n, cb, h, w]);
    let got = run(ctx, &back, |bt| {
        ops::layout_nlc_to_nchw(bt, &nlc, &back).expect("record")
    });
    assert_close("nlc_to_nchw round trip", &got, &b, TOL);
}

#[test]
fn timestep_embedding_matches_diffusers_formula() {
    let ctx = native();
    // Fractional and large timesteps (arguments up to 999 rad), even and odd widths.
    let t = [0.0, 1.0, 500.5, 999.0, 980.25];
    let tg = upload(ctx, &t, &[t.len()]);
    for (dim, flip, shift) in [(320, true, 0.0), (33, false, 1.0), (64, false, 0.0)] {
        let y = poisoned(ctx, &[t.len(), dim]);
        let got = run(ctx, &y, |b| {
            ops::timestep_embedding(b, &tg, &y, flip, shift).expect("record")
        });
        let want = reference::timestep_embedding(&t, dim, flip, shift);
        assert_close(
            &format!("timestep dim {dim} flip {flip} shift {shift}"),
            &got,
            &want,
            Tolerance {
                abs: 2e-6,
                rel: 0.0,
            },
        );
    }
}

#[test]
fn embedding_gather_matches_reference_for_every_weight_variant() {
    for weights in ALL_WEIGHTS {
        let ctx = context_for(weights);
        let mut rng = rng(504);
        let (vocab, dim, batch, len) = (50, 33, 2, 7);
        let table = random(&mut rng, vocab * dim, 1.0);
        let positions = random(&mut rng, 9 * dim, 1.0);
        let ids: Vec<u32> = (0..batch * len)
            .map(|i| ((i * 37 + 11) % vocab) as u32)
            .collect();
        let (tg, seen) = weight(ctx, weights, &table, &[vocab, dim]);
        let pg = upload(ctx, &positions, &[9, dim]);
        let idg = ctx.upload_u32(&ids, &[batch, len]).expect("upload");
        let y = poisoned(ctx, &[batch, len, dim]);
        let got = run(ctx, &y, |b| {
            ops::embedding(b, &idg, &ids, &tg, &pg, &y).expect("record")
        });
        let want = reference::embedding(&ids, len, &seen, &positions, dim);
        assert_close(&format!("embedding {weights:?}"), &got, &want, TOL);

        let bad: Vec<u32> = ids.iter().map(|&i| i + vocab as u32).collect();
        let bad_gpu = ctx.upload_u32(&bad, &[batch, len]).expect("upload");
        let mut batch_rec = ctx.batch();
        let err = ops::embedding(&mut batch_rec, &bad_gpu, &bad, &tg, &pg, &y)
            .expect_err("ids out of range");
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        assert_eq!(
            tg.dtype(),
            if matches!(weights, Weights::F32) {
                DType::F32
            } else {
                DType::F16
            }
        );
    }
}
