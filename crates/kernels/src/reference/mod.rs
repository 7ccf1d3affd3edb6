//! Plain-Rust CPU references of every kernel, written for clarity (direct loops, f64
//! accumulation), and the comparison helper the tests use. Layouts and argument meanings match
//! the launchers in [`crate::ops`].

mod compare;

pub use compare::{Mismatch, Tolerance, compare};

/// `y[r, j] = sum_k x[r, k] w[j, k] + b[j]`.
pub fn linear(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            let mut acc = b.map_or(0.0, |b| f64::from(b[j]));
            for i in 0..k {
                acc += f64::from(x[r * k + i]) * f64::from(w[j * k + i]);
            }
            y[r * n + j] = acc as f32;
        }
    }
    y
}

/// NCHW convolution: `x` `[n, ic, h, w]`, `weight` `[oc, ic, kh, kw]`, output
/// `[n, oc, oh, ow]` with `oh = (h + pad_begin + pad_end - kh) / stride + 1`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    [n, ic, h, w]: [usize; 4],
    weight: &[f32],
    [oc, kh, kw]: [usize; 3],
    bias: Option<&[f32]>,
    stride: usize,
    (pad, pad_end): (usize, usize),
) -> Vec<f32> {
    let oh = (h + pad + pad_end - kh) / stride + 1;
    let ow = (w + pad + pad_end - kw) / stride + 1;
    let mut y = vec![0.0; n * oc * oh * ow];
    for b in 0..n {
        for o in 0..oc {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |bias| f64::from(bias[o]));
                    for c in 0..ic {
                        for ky in 0..kh {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * ic + c) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((o * ic + c) * kh + ky) * kw + kx];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    y[((b * oc + o) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// Group norm of `x` `[n, c, spatial]` with `groups`, affine `gamma`/`beta` `[c]`, optional SiLU.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    [n, c, spatial]: [usize; 3],
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) -> Vec<f32> {
    let per_group = c / groups * spatial;
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for g in 0..groups {
            let base = (b * groups + g) * per_group;
            let xs = &x[base..base + per_group];
            let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / per_group as f64;
            let var = xs
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / per_group as f64;
            let rstd = 1.0 / (var + f64::from(eps)).sqrt();
            for (i, &v) in xs.iter().enumerate() {
                let ch = (base + i) / spatial % c;
                let mut out =
                    (f64::from(v) - mean) * rstd * f64::from(gamma[ch]) + f64::from(beta[ch]);
                if silu {
                    out = silu_f64(out);
                }
                y[base + i] = out as f32;
            }
        }
    }
    y
}

/// Layer norm over rows of length `dim`.
pub fn layer_norm(x: &[f32], dim: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (row, out) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / dim as f64;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        for i in 0..dim {
            out[i] = ((f64::from(row[i]) - mean) * rstd * f64::from(gamma[i]) + f64::from(beta[i]))
                as f32;
        }
    }
    y
}

/// Attention for the query rows `rows` (all rows: `0..q_len`), token-major tensors
/// `[batch, len, heads * head_dim]`; returns `[batch, rows.len(), heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [batch, heads, head_dim, q_len, kv_len]: [usize; 5],
    causal: bool,
    scale: f32,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    let width = heads * head_dim;
    let mut out = vec![0.0; batch * rows.len() * width];
    let mut scores = vec![0.0f64; kv_len];
    for b in 0..batch {
        for h in 0..heads {
            for (r, i) in rows.clone().enumerate() {
                let qi = &q[(b * q_len + i) * width + h * head_dim..][..head_dim];
                let keys = if causal { i + 1 } else { kv_len };
                let mut max = f64::NEG_INFINITY;
                for j in 0..keys {
                    let kj = &k[(b * kv_len + j) * width + h * head_dim..][..head_dim];
                    let s: f64 = qi
                        .iter()
                        .zip(kj)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        * f64::from(scale);
                    scores[j] = s;
                    max = max.max(s);
                }
                let mut sum = 0.0;
                for s in &mut scores[..keys] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[(b * rows.len() + r) * width + h * head_dim..][..head_dim];
                for (d, od) in o.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for j in 0..keys {
                        acc +=
                            scores[j] * f64::from(v[(b * kv_len + j) * width + h * head_dim + d]);
                    }
                    *od = (acc / sum) as f32;
                }
            }
        }
    }
    out
}

fn silu_f64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// SiLU.
pub fn silu(x: f32) -> f32 {
    silu_f64(f64::from(x)) as f32
}

/// Exact GELU with erf.
pub fn gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

/// GELU, tanh approximation.
pub fn gelu_tanh(x: f32) -> f32 {
    let x = f64::from(x);
    let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
    (0.5 * x * (1.0 + inner.tanh())) as f32
}

/// CLIP's quick GELU.
pub fn quick_gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (x / (1.0 + (-1.702 * x).exp())) as f32
}

/// GEGLU over rows of `2 * dim`: `hidden * gelu(gate)`.
pub fn geglu(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks(2 * dim)
        .flat_map(|row| {
            (0..dim).map(move |i| (f64::from(row[i]) * f64::from(gelu(row[dim + i]))) as f32)
        })
        .collect()
}

/// Nearest upsampling of `planes` planes of `h x w` to `oh x ow` (source `floor(o * h / oh)`).
pub fn upsample_nearest(
    x: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let mut y = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                y.push(x[(p * h + oy * h / oh) * w + ox * w / ow]);
            }
        }
    }
    y
}

/// `cat([a, b], dim=1)` of `[n, ca, spatial]` and `[n, cb, spatial]`.
pub fn concat_channels(
    a: &[f32],
    b: &[f32],
    n: usize,
    ca: usize,
    cb: usize,
    spatial: usize,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(a.len() + b.len());
    for i in 0..n {
        y.extend_from_slice(&a[i * ca * spatial..(i + 1) * ca * spatial]);
        y.extend_from_slice(&b[i * cb * spatial..(i + 1) * cb * spatial]);
    }
    y
}

/// `[n, rows, cols]` to `[n, cols, rows]` (NCHW <-> token-major).
pub fn transpose_last2(x: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for r in 0..rows {
            for c in 0..cols {
                y[(b * cols + c) * rows + r] = x[(b * rows + r) * cols + c];
            }
        }
    }
    y
}

/// diffusers' `get_timestep_embedding` (max period 10000, scale 1) as torch computes it in
/// f32: frequencies rounded to f32, the argument `t * freq` an f32 product, sin and cos exact.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Vec<f32> {
    let half = dim / 2;
    let mut y = vec![0.0; timesteps.len() * dim];
    for (n, &t) in timesteps.iter().enumerate() {
        for j in 0..half {
            let freq =
                (-(10000f64.ln()) * j as f64 / (half as f64 - f64::from(freq_shift))).exp() as f32;
            let arg = f64::from(t * freq);
            let (first, second) = if flip_sin_to_cos {
                (arg.cos(), arg.sin())
            } else {
                (arg.sin(), arg.cos())
            };
            y[n * dim + j] = first as f32;
            y[n * dim + half + j] = second as f32;
        }
    }
    y
}

/// `token_table[ids[i]] + positions[i % seq_len]`, rows of width `dim`.
pub fn embedding(
    ids: &[u32],
    seq_len: usize,
    token_table: &[f32],
    positions: &[f32],
    dim: usize,
) -> Vec<f32> {
    ids.iter()
        .enumerate()
        .flat_map(|(i, &id)| {
            let tok = &token_table[id as usize * dim..][..dim];
            let pos = &positions[(i % seq_len) * dim..][..dim];
            tok.iter().zip(pos).map(|(a, b)| a + b)
        })
        .collect()
}
