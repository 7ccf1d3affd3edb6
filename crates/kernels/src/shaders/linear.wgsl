// linear.wgsl: y = x W^T + b, the projection of every Linear layer (and 1x1 work on tokens).
//
// A workgroup of 8x8 threads computes a 64x64 tile of y; each thread an 8x8 block held in
// registers (`Block8x8`, common.wgsl: four FMAs per shared-memory read). K is walked in steps
// of 32 through shared memory. Each thread loads four consecutive k of its own row of x and of W
// at a time (vectorisable; neighbouring threads read rows k apart, so the loads are not
// coalesced: a cost on real GPUs not measured yet).
//
// `linear_few_rows` is the same product for at most FEW_ROWS rows (a batch's time embedding,
// every ResNet's time projection), where a 64-row tile would compute mostly padding: each thread
// one output column for every row, x's rows staged through shared memory FEW_K at a time.
//
// With `layer_norm`, x is layer-normed as it is loaded (`nn.LayerNorm` before a transformer's
// projections, fused instead of a pass of its own): the loader thread of a row computes that
// row's mean and 1/std first (two passes over the row in f32, as layer_norm.wgsl does).

struct Params {
    rows: u32,            // rows of x and y (batch dimensions flattened)
    n: u32,               // output features
    k: u32,               // input features
    has_bias: u32,        // 0: bias is ignored
    epilogue: u32,        // 1: y = (x W^T + b + residual) * residual_factor;
                          // 3: GEGLU, y[.., j] = h[.., 2j] * gelu(h[.., 2j + 1]), y has n / 2 columns
    residual_factor: f32,
    layer_norm: u32,      // 1: x is layer-normed with gamma, beta as it is loaded
    norm_eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;                // [rows, k]
@group(0) @binding(2) var<storage, read> weights: array<WEIGHT_STORE>; // [n, k]
@group(0) @binding(3) var<storage, read> bias: array<f32>;             // [n]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;          // [rows, n]
@group(0) @binding(5) var<storage, read> residual: array<f32>;         // [rows, n]
@group(0) @binding(6) var<storage, read> gamma: array<f32>;            // [k]
@group(0) @binding(7) var<storage, read> beta: array<f32>;             // [k]

// The tiles (common.wgsl): rows are rows of x, columns rows of W.

// Mean and 1/std of row `row` of x (zeros past the last row).
fn row_statistics(row: u32) -> vec2<f32> {
    if (row >= p.rows) {
        return vec2<f32>(0.0);
    }
    let base = row * p.k;
    var sum = 0.0;
    for (var i = 0u; i < p.k; i++) {
        sum += x[base + i];
    }
    let mean = sum / f32(p.k);
    var sq = 0.0;
    for (var i = 0u; i < p.k; i++) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    return vec2<f32>(mean, inverseSqrt(sq / f32(p.k) + p.norm_eps));
}

// Four consecutive k of row `row` of x, layer-normed with the row's `stats` when asked.
fn load_x4(row: u32, k0: u32, stats: vec2<f32>) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (row < p.rows) {
        let base = row * p.k;
        for (var i = 0u; i < 4u; i++) {
            let k = k0 + i;
            if (k < p.k) {
                v[i] = x[base + k];
                if (p.layer_norm != 0u) {
                    v[i] = (v[i] - stats.x) * stats.y * gamma[k] + beta[k];
                }
            }
        }
    }
    return v;
}

fn load_w4(col: u32, k0: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (col < p.n) {
        let base = col * p.k;
        for (var i = 0u; i < 4u; i++) {
            if (k0 + i < p.k) {
                v[i] = load_weight(base + k0 + i);
            }
        }
    }
    return v;
}

@compute @workgroup_size(8, 8)
fn linear(@builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * GEMM_TILE;
    let col0 = wid.x * GEMM_TILE;
    let tid = lid.y * 8u + lid.x;

    // The statistics of the row this thread loads.
    var stats = vec2<f32>(0.0);
    if (p.layer_norm != 0u) {
        stats = row_statistics(row0 + tid);
    }

    // Row i of acc: y row lid.y * 8 + i, columns lid.x * 8 .. +8.
    var acc: Block8x8;
    for (var k0 = 0u; k0 < p.k; k0 += GEMM_K) {
        // Loaders: thread tid brings row tid of x and column tid of W (row tid of the weight).
        for (var q = 0u; q < GEMM_K; q += 4u) {
            let xv = load_x4(row0 + tid, k0 + q, stats);
            let wv = load_w4(col0 + tid, k0 + q);
            for (var i = 0u; i < 4u; i++) {
                gemm_put(q + i, tid, xv[i], wv[i]);
            }
        }
        workgroupBarrier();
        gemm_step(&acc, lid);
        workgroupBarrier();
    }

    for (var i = 0u; i < 8u; i++) {
        store_row(row0 + lid.y * 8u + i, col0 + lid.x * 8u, block_row(acc, i));
    }
}

// Writes eight consecutive columns of `row` plus the bias (and the residual connection, fused
// here instead of a pass of its own), skipping what lies outside y.
fn store_row(row: u32, col: u32, sums: array<f32, 8>) {
    if (row >= p.rows) {
        return;
    }
    if (p.epilogue == 3u) {
        store_geglu(row, col, sums);
        return;
    }
    for (var j = 0u; j < 8u; j++) {
        if (col + j < p.n) {
            store_one(row, col + j, sums[j]);
        }
    }
}

// One element of y: the sum plus the bias, then the residual connection where there is one.
fn store_one(row: u32, col: u32, sum: f32) {
    let index = row * p.n + col;
    var v = sum;
    if (p.has_bias != 0u) {
        v += bias[col];
    }
    if (p.epilogue == 1u) {
        v = (v + residual[index]) * p.residual_factor;
    }
    y[index] = v;
}

const FEW_ROWS: u32 = 8u;
const FEW_K: u32 = 128u;
var<workgroup> few_x: array<vec4<f32>, 256>; // [FEW_ROWS][FEW_K / 4]

@compute @workgroup_size(64)
fn linear_few_rows(@builtin(local_invocation_index) lid: u32,
                   @builtin(workgroup_id) wid: vec3<u32>) {
    let col = wid.x * 64u + lid;
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var k0 = 0u; k0 < p.k; k0 += FEW_K) {
        // Four k of one row per element: rows past the last and k past the end are zeros.
        for (var e = lid; e < FEW_ROWS * FEW_K / 4u; e += 64u) {
            let row = e / (FEW_K / 4u);
            let k = k0 + 4u * (e % (FEW_K / 4u));
            var v = vec4<f32>(0.0);
            if (row < p.rows) {
                for (var i = 0u; i < 4u; i++) {
                    if (k + i < p.k) {
                        v[i] = x[row * p.k + k + i];
                    }
                }
            }
            few_x[e] = v;
        }
        workgroupBarrier();
        if (col < p.n) {
            let steps = min(FEW_K, p.k - k0);
            for (var k = 0u; k < steps; k += 4u) {
                let w = load_w4(col, k0 + k);
                for (var row = 0u; row < FEW_ROWS; row++) {
                    acc[row] += dot(few_x[row * (FEW_K / 4u) + k / 4u], w);
                }
            }
        }
        workgroupBarrier();
    }
    if (col < p.n) {
        for (var row = 0u; row < FEW_ROWS; row++) {
            if (row < p.rows) {
                store_one(row, col, acc[row]);
            }
        }
    }
}

// GEGLU: the weight's rows come in (value, gate) pairs (ops::geglu_pairs), so a thread's eight
// columns are four pairs and it writes four outputs `value * gelu(gate)`: the projection's
// 2x-wide output never reaches memory.
fn store_geglu(row: u32, col: u32, sums: array<f32, 8>) {
    let width = p.n / 2u;
    for (var i = 0u; i < 4u; i++) {
        let c = col + 2u * i;
        if (c + 1u < p.n) {
            var value = sums[2u * i];
            var gate = sums[2u * i + 1u];
            if (p.has_bias != 0u) {
                value += bias[c];
                gate += bias[c + 1u];
            }
            y[row * width + c / 2u] = value * gelu_erf(gate);
        }
    }
}
