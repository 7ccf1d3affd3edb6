use sd_kernels::ops::{self, AttentionShape, TokenFeatures};
use sd_kernels::reference::{self, Tolerance};

use crate::common::*;

const TOL: Tolerance = Tolerance {
    abs: 2e-5,
    rel: 1e-4,
};

fn check(label: &str, shape: AttentionShape, seed: u64, rows: std::ops::Range<usize>) {
    let ctx = native();
    let AttentionShape {
        batch,
        heads,
        head_dim,
        q_len,
        kv_len,
        causal,
        scale,
    } = shape;
    let width = heads * head_dim;
    let mut rng = rng(seed);
    let q = random(&mut rng, batch * q_len * width, 1.0);
    let k = random(&mut rng, batch * kv_len * width, 1.0);
    let v = random(&mut rng, batch * kv_len * width, 1.0);
    let (qg, kg, vg) = (
        upload(ctx, &q, &[batch, q_len, width]),
        upload(ctx, &k, &[batch, kv_len, width]),
        upload(ctx, &v, &[batch, kv_len, width]),
    );
    let o = poisoned(ctx, &[batch, q_len, width]);
    let got = run(ctx, &o, |b| {
        ops::attention(b, &qg, &kg, &vg, &o, shape).expect("record")
    });
    let want = reference::attention(
        &q,
        &k,
        &v,
        [batch, heads, head_dim, q_len, kv_len],
        causal,
        scale,
        rows.clone(),
    );
    let got_rows: Vec<f32> = (0..batch)
        .flat_map(|b| {
            got[(b * q_len + rows.start) * width..(b * q_len + rows.end) * width].to_vec()
        })
        .collect();
    assert_close(label, &got_rows, &want, TOL);
    if rows.len() < q_len {
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{label}: rows outside the checked range were not written"
        );
    }
}

fn shape(
    batch: usize,
    heads: usize,
    head_dim: usize,
    q_len: usize,
    kv_len: usize,
    causal: bool,
) -> AttentionShape {
    AttentionShape {
        batch,
        heads,
        head_dim,
        q_len,
        kv_len,
        causal,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

#[test]
fn self_and_cross_attention_match_reference() {
    // The digits UNet's self-attention (8 heads of 4), SD 1.5-like cross-attention (head 40
    // over 77 text tokens), a big head (160) with few keys, an odd head size, and a query count
    // off the 64-row workgroups.
    let cases = [
        ("self 8x4", shape(2, 8, 4, 67, 67, false)),
        ("cross 2x40", shape(1, 2, 40, 70, 77, false)),
        ("cross 1x160", shape(2, 1, 160, 65, 9, false)),
        ("self 3x5", shape(1, 3, 5, 130, 130, false)),
        ("vae mid 1x512", shape(1, 1, 512, 70, 70, false)),
    ];
    for (i, (label, s)) in cases.into_iter().enumerate() {
        check(label, s, 400 + i as u64, 0..s.q_len);
    }
}

/// Self-attention reading q, k and v side by side from one tensor `[n, l, 3 * width]`, as the
/// one matmul of the three projections writes them, equals the reference on separate tensors.
#[test]
fn attention_reads_q_k_v_side_by_side_from_one_tensor() {
    let ctx = native();
    let s = shape(2, 3, 8, 70, 70, false);
    let (n, l, width) = (s.batch, s.q_len, s.heads * s.head_dim);
    let mut rng = rng(430);
    let [q, k, v] = [0, 1, 2].map(|_| random(&mut rng, n * l * width, 1.0));
    let packed: Vec<f32> = (0..n * l)
        .flat_map(|token| {
            [&q, &k, &v]
                .into_iter()
                .flat_map(move |t| t[token * width..(token + 1) * width].to_vec())
        })
        .collect();
    let qkv = upload(ctx, &packed, &[n, l, 3 * width]);
    let o = poisoned(ctx, &[n, l, width]);
    let features = [0, 1, 2].map(|i| TokenFeatures {
        tensor: &qkv,
        offset: i * width,
        stride: 3 * width,
    });
    let got = run(ctx, &o, |b| {
        ops::attention_of_features(b, features, &o, s).expect("record")
    });
    let want = reference::attention(&q, &k, &v, [n, 3, 8, l, l], false, s.scale, 0..l);
    assert_close("packed q, k, v", &got, &want, TOL);

    // A feature range past the token is refused.
    let beyond = TokenFeatures {
        tensor: &qkv,
        offset: 2 * width + 1,
        stride: 3 * width,
    };
    let mut batch = ctx.batch();
    let err = ops::attention_of_features(&mut batch, [features[0], features[1], beyond], &o, s)
        .expect_err("v past the end of its token");
    assert!(err.to_string().contains("v: features"), "{err}");
}

#[test]
fn causal_attention_matches_reference() {
    // CLIP: 77 tokens, causal; and a length spanning several query workgroups and key blocks.
    check("causal 4x16", shape(2, 4, 16, 77, 77, true), 410, 0..77);
    check("causal 1x64", shape(1, 1, 64, 150, 150, true), 411, 0..150);
}

/// SD 1.5's largest self-attention is 4096 tokens (64x64 latents), 8 heads of 40, batch 2. Its
/// tiling is the same per head, so one head of 40 over all 4096 tokens runs here (8 heads at
/// batch 2 are 16x the work: too slow for a software adapter); rows 0..96 and the last 64
/// are checked against the reference, and every row must be written.
#[test]
fn sd15_sized_self_attention_is_tiled_and_exact() {
    let s = shape(1, 1, 40, 4096, 4096, false);
    check("sd15 4096 tokens, rows 0..96", s, 420, 0..96);
    check("sd15 4096 tokens, last rows", s, 420, s.q_len - 64..s.q_len);
}

#[test]
fn attention_rejects_bad_shapes() {
    let ctx = native();
    let t = upload(ctx, &[0.5; 2 * 8], &[1, 2, 8]);
    let big = upload(ctx, &[0.5; 2 * 600], &[1, 2, 600]);
    let mut batch = ctx.batch();
    let err = ops::attention(
        &mut batch,
        &big,
        &big,
        &big,
        &big,
        shape(1, 1, 600, 2, 2, false),
    )
    .expect_err("head too big");
    assert!(err.to_string().contains("head size"), "{err}");
    let err = ops::attention(&mut batch, &t, &t, &t, &t, shape(1, 3, 4, 2, 2, false))
        .expect_err("3x4 != 8");
    assert!(err.to_string().contains("elements"), "{err}");
}
