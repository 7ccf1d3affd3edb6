use sd_kernels::ops::{self, ChannelBias, Conv2dChunk, Conv2dLayouts, Conv2dShape, Residual};
use sd_kernels::reference::{self, Tolerance};

use crate::common::*;

const TOL: Tolerance = Tolerance {
    abs: 2e-5,
    rel: 1e-5,
};

/// ([n, ic, h, w], oc, kernel, stride, pad): SD's three kinds, with odd sizes and channel counts
/// off the 64-wide tiles.
const CASES: [([usize; 4], usize, usize, usize, usize); 4] = [
    ([2, 5, 9, 7], 6, 3, 1, 1),
    ([1, 13, 11, 10], 70, 3, 2, 1),
    ([2, 33, 6, 5], 17, 1, 1, 0),
    ([1, 3, 8, 8], 65, 3, 1, 1),
];

#[test]
fn conv2d_matches_reference_for_every_weight_variant() {
    for weights in ALL_WEIGHTS {
        for (case, &([n, ic, h, w], oc, kernel, stride, pad)) in CASES.iter().enumerate() {
            let ctx = context_for(weights);
            let mut rng = rng(200 + case as u64);
            let x = random(&mut rng, n * ic * h * w, 1.0);
            let wt = random(&mut rng, oc * ic * kernel * kernel, 0.3);
            let b = random(&mut rng, oc, 1.0);
            let (w_gpu, w_seen) = weight(ctx, weights, &wt, &[oc, ic, kernel, kernel]);
            let shape = Conv2dShape::symmetric(stride, pad);
            let (oh, ow) = (shape.out_size(h, kernel), shape.out_size(w, kernel));
            let x_gpu = upload(ctx, &x, &[n, ic, h, w]);
            let b_gpu = upload(ctx, &b, &[oc]);
            let y = poisoned(ctx, &[n, oc, oh, ow]);
            let got = run(ctx, &y, |batch| {
                ops::conv2d(
                    batch,
                    &x_gpu,
                    &w_gpu,
                    Some(&b_gpu),
                    &y,
                    shape,
                    Conv2dChunk::WHOLE,
                )
                .expect("record")
            });
            let want = reference::conv2d(
                &x,
                [n, ic, h, w],
                &w_seen,
                [oc, kernel, kernel],
                Some(&b),
                stride,
                (pad, pad),
            );
            assert_close(&format!("conv2d {weights:?} case {case}"), &got, &want, TOL);
        }
    }
}

/// The VAE encoder's downsampler: stride 2, no padding before, one row and column after.
#[test]
fn conv2d_with_padding_only_after() {
    for weights in ALL_WEIGHTS {
        let ctx = context_for(weights);
        let mut rng = rng(260);
        let (n, ic, h, w, oc) = (1, 7, 10, 9, 5);
        let x = random(&mut rng, n * ic * h * w, 1.0);
        let wt = random(&mut rng, oc * ic * 9, 0.3);
        let b = random(&mut rng, oc, 1.0);
        let (w_gpu, w_seen) = weight(ctx, weights, &wt, &[oc, ic, 3, 3]);
        let shape = Conv2dShape {
            stride: 2,
            pad_begin: 0,
            pad_end: 1,
        };
        let (oh, ow) = (shape.out_size(h, 3), shape.out_size(w, 3));
        assert_eq!((oh, ow), (5, 4));
        let (xg, bg) = (upload(ctx, &x, &[n, ic, h, w]), upload(ctx, &b, &[oc]));
        let y = poisoned(ctx, &[n, oc, oh, ow]);
        let got = run(ctx, &y, |batch| {
            ops::conv2d(batch, &xg, &w_gpu, Some(&bg), &y, shape, Conv2dChunk::WHOLE)
                .expect("record")
        });
        let want = reference::conv2d(&x, [n, ic, h, w], &w_seen, [oc, 3, 3], Some(&b), 2, (0, 1));
        assert_close(&format!("conv2d pad after {weights:?}"), &got, &want, TOL);
    }
}

/// A ResNet's `conv1` with its time embedding: `conv(x) + b + t[n, offset + c]`, the
/// per-(item, channel) bias read from a wider row (every ResNet's projection side by side) and
/// added by the epilogue, over columns that span both batch items and output channels off the
/// 64-wide tiles.
#[test]
fn conv2d_adds_a_channel_bias_in_its_epilogue() {
    let ctx = native();
    let mut rng = rng(270);
    let (n, ic, h, w, oc) = (3, 6, 7, 9, 67);
    let (width, offset) = (oc + 40, 29);
    let x = random(&mut rng, n * ic * h * w, 1.0);
    let wt = random(&mut rng, oc * ic * 9, 0.3);
    let b = random(&mut rng, oc, 1.0);
    let t = random(&mut rng, n * width, 1.0);
    let (w_gpu, w_seen) = weight(ctx, Weights::F16Native, &wt, &[oc, ic, 3, 3]);
    let shape = Conv2dShape::symmetric(1, 1);
    let (xg, bg, tg) = (
        upload(ctx, &x, &[n, ic, h, w]),
        upload(ctx, &b, &[oc]),
        upload(ctx, &t, &[n, 1, width]),
    );
    let y = poisoned(ctx, &[n, oc, h, w]);
    let got = run(ctx, &y, |batch| {
        let channel_bias = ChannelBias {
            tensor: &tg,
            offset,
        };
        ops::conv2d_with_channel_bias(batch, &xg, &w_gpu, Some(&bg), &y, shape, channel_bias)
            .expect("record")
    });
    let want: Vec<f32> =
        reference::conv2d(&x, [n, ic, h, w], &w_seen, [oc, 3, 3], Some(&b), 1, (1, 1))
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (item, channel) = (i / (oc * h * w), i / (h * w) % oc);
                v + t[item * width + offset + channel]
            })
            .collect();
    assert_close("conv2d + channel bias", &got, &want, TOL);
}

/// Channel-bias columns past the end of its rows are refused, naming the range.
#[test]
fn conv2d_refuses_a_channel_bias_too_narrow() {
    let ctx = native();
    let (n, ic, oc) = (2, 3, 8);
    let x = upload(ctx, &vec![0.0; n * ic * 16], &[n, ic, 4, 4]);
    let (w_gpu, _) = weight(ctx, Weights::F32, &vec![0.0; oc * ic * 9], &[oc, ic, 3, 3]);
    let t = upload(ctx, &vec![0.0; n * 10], &[n, 10]);
    let y = poisoned(ctx, &[n, oc, 4, 4]);
    let mut batch = ctx.batch();
    let channel_bias = ChannelBias {
        tensor: &t,
        offset: 3,
    };
    let shape = Conv2dShape::symmetric(1, 1);
    let error =
        ops::conv2d_with_channel_bias(&mut batch, &x, &w_gpu, None, &y, shape, channel_bias)
            .expect_err("columns 3..11 of 10");
    assert!(error.to_string().contains("3..11"), "{error}");
}

/// A convolution of `torch.cat([a, b], dim=1)` read in place equals the convolution of the
/// concatenated tensor, for every weight variant: the 1x1 shortcut of an up block's ResNet and
/// a 3x3, with channel counts off the 32-channel steps (the split falls inside a step).
#[test]
fn conv2d_of_a_concatenation_equals_the_conv_of_the_concatenated_tensor() {
    for weights in ALL_WEIGHTS {
        for (case, &(n, ca, cb, h, w, oc, kernel)) in
            [(2, 21, 19, 5, 7, 33, 1), (1, 40, 30, 6, 5, 17, 3)]
                .iter()
                .enumerate()
        {
            let ctx = context_for(weights);
            let mut rng = rng(280 + case as u64);
            let ic = ca + cb;
            let a = random(&mut rng, n * ca * h * w, 1.0);
            let b = random(&mut rng, n * cb * h * w, 1.0);
            let wt = random(&mut rng, oc * ic * kernel * kernel, 0.3);
            let bias = random(&mut rng, oc, 1.0);
            let cat = reference::concat_channels(&a, &b, n, ca, cb, h * w);
            let (w_gpu, w_seen) = weight(ctx, weights, &wt, &[oc, ic, kernel, kernel]);
            let shape = Conv2dShape::symmetric(1, kernel / 2);
            let (ag, bg, biasg) = (
                upload(ctx, &a, &[n, ca, h, w]),
                upload(ctx, &b, &[n, cb, h, w]),
                upload(ctx, &bias, &[oc]),
            );
            let y = poisoned(ctx, &[n, oc, h, w]);
            let got = run(ctx, &y, |batch| {
                ops::conv2d_of_concat(batch, [&ag, &bg], &w_gpu, Some(&biasg), &y, shape)
                    .expect("record")
            });
            let pad = kernel / 2;
            let want = reference::conv2d(
                &cat,
                [n, ic, h, w],
                &w_seen,
                [oc, kernel, kernel],
                Some(&bias),
                1,
                (pad, pad),
            );
            assert_close(
                &format!("conv2d of concat {weights:?} case {case}"),
                &got,
                &want,
                TOL,
            );
        }
    }
}

/// A convolution over a tensor split into channel chunks (as the planner splits VAE tensors
/// that exceed one binding) equals the unsplit one: input chunks accumulate, output chunks
/// select their channels, and the residual connection given to the last input chunk's call is
/// added once, after the whole sum: `(conv + b + r) * factor`.
#[test]
fn conv2d_over_channel_chunks_equals_the_whole() {
    let ctx = native();
    let mut rng = rng(250);
    let (n, ic, h, w, oc) = (2, 12, 7, 9, 10);
    let x = random(&mut rng, n * ic * h * w, 1.0);
    let wt = random(&mut rng, oc * ic * 9, 0.3);
    let b = random(&mut rng, oc, 1.0);
    let r = random(&mut rng, n * oc * h * w, 1.0);
    let want: Vec<f32> = reference::conv2d(&x, [n, ic, h, w], &wt, [oc, 3, 3], Some(&b), 1, (1, 1))
        .iter()
        .zip(&r)
        .map(|(v, r)| (v + r) * 0.5)
        .collect();
    let (w_gpu, _) = weight(ctx, Weights::F32, &wt, &[oc, ic, 3, 3]);
    let b_gpu = upload(ctx, &b, &[oc]);
    // Input channels 0..5 and 5..12; output channels 0..4 and 4..10.
    let split_in = |lo: usize, hi: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|i| x[(i * ic + lo) * h * w..(i * ic + hi) * h * w].to_vec())
            .collect()
    };
    let x_chunks = [
        (0, upload(ctx, &split_in(0, 5), &[n, 5, h, w])),
        (5, upload(ctx, &split_in(5, 12), &[n, 7, h, w])),
    ];
    let shape = Conv2dShape::symmetric(1, 1);
    let out_chunk = |values: &[f32], lo: usize, hi: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|i| values[(i * oc + lo) * h * w..(i * oc + hi) * h * w].to_vec())
            .collect()
    };
    for (oc_lo, oc_hi) in [(0, 4), (4, 10)] {
        let y = poisoned(ctx, &[n, oc_hi - oc_lo, h, w]);
        let r_gpu = upload(ctx, &out_chunk(&r, oc_lo, oc_hi), &[n, oc_hi - oc_lo, h, w]);
        let got = run(ctx, &y, |batch| {
            for (i, (ic_offset, xc)) in x_chunks.iter().enumerate() {
                let chunk = Conv2dChunk {
                    ic_offset: *ic_offset,
                    oc_offset: oc_lo,
                    accumulate: i > 0,
                };
                let residual = (i + 1 == x_chunks.len()).then_some(Residual {
                    tensor: &r_gpu,
                    factor: 0.5,
                });
                ops::conv2d_with_residual(
                    batch,
                    xc,
                    &w_gpu,
                    Some(&b_gpu),
                    &y,
                    shape,
                    chunk,
                    residual,
                )
                .expect("record");
            }
        });
        let want_chunk = out_chunk(&want, oc_lo, oc_hi);
        assert_close(
            &format!("conv2d chunk out {oc_lo}..{oc_hi}"),
            &got,
            &want_chunk,
            TOL,
        );
    }
}

#[test]
fn conv2d_rejects_a_wrong_output_shape() {
    let ctx = native();
    let x = upload(ctx, &[0.5; 2 * 4 * 4], &[1, 2, 4, 4]);
    let w = upload(ctx, &[0.5; 3 * 2 * 9], &[3, 2, 3, 3]);
    let y = poisoned(ctx, &[1, 3, 4, 4]);
    let mut batch = ctx.batch();
    let stride2 = Conv2dShape::symmetric(2, 1);
    let err = ops::conv2d(&mut batch, &x, &w, None, &y, stride2, Conv2dChunk::WHOLE)
        .expect_err("y is 4x4, stride 2 gives 2x2");
    assert!(err.to_string().contains("expected [1, 3, 2, 2]"), "{err}");
}

/// `[n, c, h * w]` as `[n, h * w, c]` (channels last), or back with `back`.
fn channels_last(values: &[f32], [n, c, hw]: [usize; 3], back: bool) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let (nchw, last) = ((i * c + ch) * hw + p, (i * hw + p) * c + ch);
                if back {
                    out[nchw] = values[last];
                } else {
                    out[last] = values[nchw];
                }
            }
        }
    }
    out
}

/// A convolution reading and writing channels-last tensors (a transformer's `proj_in` writing
/// its tokens, `proj_out` reading them) equals the NCHW one transposed, the residual added in
/// the output's layout: 1x1 as SD uses it, and 3x3 to cover the taps.
#[test]
fn conv2d_reads_and_writes_channels_last() {
    let ctx = native();
    let (n, ic, h, w, oc) = (2, 7, 5, 6, 67);
    for (case, (kernel, x_tokens, y_tokens)) in
        [(1, false, true), (1, true, false), (3, true, true)]
            .into_iter()
            .enumerate()
    {
        let mut rng = rng(280 + case as u64);
        let x = random(&mut rng, n * ic * h * w, 1.0);
        let wt = random(&mut rng, oc * ic * kernel * kernel, 0.3);
        let b = random(&mut rng, oc, 1.0);
        let r = random(&mut rng, n * oc * h * w, 1.0);
        let (w_gpu, w_seen) = weight(ctx, Weights::F16Native, &wt, &[oc, ic, kernel, kernel]);
        let layouts = Conv2dLayouts { x_tokens, y_tokens };
        let pad = kernel / 2;
        let shape = Conv2dShape::symmetric(1, pad);
        let in_layout = |v: &[f32], c: usize, last: bool| {
            if last {
                channels_last(v, [n, c, h * w], false)
            } else {
                v.to_vec()
            }
        };
        let dims = |c: usize, last: bool| if last { [n, h, w, c] } else { [n, c, h, w] };
        let xg = upload(ctx, &in_layout(&x, ic, x_tokens), &dims(ic, x_tokens));
        let rg = upload(ctx, &in_layout(&r, oc, y_tokens), &dims(oc, y_tokens));
        let bg = upload(ctx, &b, &[oc]);
        let y = poisoned(ctx, &dims(oc, y_tokens));
        let residual = Residual {
            tensor: &rg,
            factor: 0.5,
        };
        let got = run(ctx, &y, |batch| {
            ops::conv2d_in_layouts(
                batch,
                &xg,
                &w_gpu,
                Some(&bg),
                &y,
                shape,
                layouts,
                Some(residual),
            )
            .expect("record")
        });
        let got = if y_tokens {
            channels_last(&got, [n, oc, h * w], true)
        } else {
            got
        };
        let want: Vec<f32> = reference::conv2d(
            &x,
            [n, ic, h, w],
            &w_seen,
            [oc, kernel, kernel],
            Some(&b),
            1,
            (pad, pad),
        )
        .iter()
        .zip(&r)
        .map(|(v, r)| (v + r) * 0.5)
        .collect();
        assert_close(
            &format!("conv2d {layouts:?} {kernel}x{kernel}"),
            &got,
            &want,
            TOL,
        );
    }
}
