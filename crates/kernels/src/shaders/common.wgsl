// common.wgsl: helpers prepended to every kernel (see shader.rs). Math in f32.

const SQRT_HALF: f32 = 0.7071067811865476;
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

// Linear invocation index of a 1-D kernel dispatched over x and y (see grid_1d in batch.rs).
fn linear_index(gid: vec3<u32>, num_groups: vec3<u32>, workgroup_size: u32) -> u32 {
    return gid.x + gid.y * num_groups.x * workgroup_size;
}

// x reduced to [-pi, pi] (Cody-Waite, 2 pi = 6.28125 + 0.00193530717958647692...): WGSL only
// promises accurate sin and cos there, and timestep arguments reach 1000.
fn reduce_angle(x: f32) -> f32 {
    let k = round(x * 0.15915494309189535);
    return (x - k * 6.28125) - k * 0.0019353071795864769;
}

// tanh that stays finite for large |x| (exp overflows to inf otherwise: inf/inf = NaN).
fn safe_tanh(x: f32) -> f32 {
    let e = exp(2.0 * clamp(x, -15.0, 15.0));
    return (e - 1.0) / (e + 1.0);
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-clamp(x, -80.0, 80.0)));
}

fn silu(x: f32) -> f32 {
    return x * sigmoid(x);
}

// erfc with fractional error below 1.2e-7 everywhere (Numerical Recipes' Chebyshev fit), so that
// GELU is accurate to f32 rounding on both tails.
fn erfc_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(poly);
    return select(2.0 - r, r, x >= 0.0);
}

// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2), as diffusers' GEGLU uses.
fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * erfc_approx(-x * SQRT_HALF);
}

// The tanh approximation of GELU (gelu_pytorch_tanh, "gelu_new").
fn gelu_tanh(x: f32) -> f32 {
    return 0.5 * x * (1.0 + safe_tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
}

// CLIP's quick_gelu: x * sigmoid(1.702 x).
fn quick_gelu(x: f32) -> f32 {
    return x * sigmoid(1.702 * x);
}

// Workgroup-wide sum for kernels with REDUCE_WG threads; every thread gets the total. Only the
// kernels that call it allocate the scratch array.
const REDUCE_WG: u32 = 256u;
var<workgroup> reduce_scratch: array<f32, REDUCE_WG>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var s = REDUCE_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            reduce_scratch[lid] += reduce_scratch[lid + s];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

// One thread's 8x8 block of a GEMM's output (linear, conv2d): rows r0..r7, each two vec4 of
// columns. Named fields, not an array: an array indexed in a loop was kept in memory by
// lavapipe's compiler, and these are the hottest values of the model.
struct Block8x8 {
    r0: vec4<f32>, r0b: vec4<f32>,
    r1: vec4<f32>, r1b: vec4<f32>,
    r2: vec4<f32>, r2b: vec4<f32>,
    r3: vec4<f32>, r3b: vec4<f32>,
    r4: vec4<f32>, r4b: vec4<f32>,
    r5: vec4<f32>, r5b: vec4<f32>,
    r6: vec4<f32>, r6b: vec4<f32>,
    r7: vec4<f32>, r7b: vec4<f32>,
}

// acc += outer product of one depth step: rows a0 (rows 0..4) and a1 (4..8), columns b0 and b1.
fn block_fma(acc: ptr<function, Block8x8>, a0: vec4<f32>, a1: vec4<f32>, b0: vec4<f32>,
             b1: vec4<f32>) {
    (*acc).r0 += a0.x * b0; (*acc).r0b += a0.x * b1;
    (*acc).r1 += a0.y * b0; (*acc).r1b += a0.y * b1;
    (*acc).r2 += a0.z * b0; (*acc).r2b += a0.z * b1;
    (*acc).r3 += a0.w * b0; (*acc).r3b += a0.w * b1;
    (*acc).r4 += a1.x * b0; (*acc).r4b += a1.x * b1;
    (*acc).r5 += a1.y * b0; (*acc).r5b += a1.y * b1;
    (*acc).r6 += a1.z * b0; (*acc).r6b += a1.z * b1;
    (*acc).r7 += a1.w * b0; (*acc).r7b += a1.w * b1;
}

// Row `i` of the block as eight values.
fn block_row(acc: Block8x8, i: u32) -> array<f32, 8> {
    var lo = acc.r0; var hi = acc.r0b;
    switch i {
        case 1u: { lo = acc.r1; hi = acc.r1b; }
        case 2u: { lo = acc.r2; hi = acc.r2b; }
        case 3u: { lo = acc.r3; hi = acc.r3b; }
        case 4u: { lo = acc.r4; hi = acc.r4b; }
        case 5u: { lo = acc.r5; hi = acc.r5b; }
        case 6u: { lo = acc.r6; hi = acc.r6b; }
        case 7u: { lo = acc.r7; hi = acc.r7b; }
        default: {}
    }
    return array<f32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w);
}

// The shared-memory tiles of the GEMM kernels (linear, conv2d), 64 output rows and 64 output
// columns by GEMM_K depth, transposed ([k][row / 4] as vec4) so that a thread reads four rows or
// columns at once. Only the kernels that use them allocate them.
const GEMM_TILE: u32 = 64u;
const GEMM_K: u32 = 32u;
var<workgroup> gemm_rows: array<vec4<f32>, 512>; // GEMM_K * GEMM_TILE / 4
var<workgroup> gemm_cols: array<vec4<f32>, 512>;

// Thread `tid` (of 64) puts depth `k` of its output row and of its output column.
fn gemm_put(k: u32, tid: u32, row_value: f32, col_value: f32) {
    gemm_rows[k * 16u + tid / 4u][tid % 4u] = row_value;
    gemm_cols[k * 16u + tid / 4u][tid % 4u] = col_value;
}

// One depth step over the tiles: the thread at `lid` (of 8x8) adds to its 8x8 block.
fn gemm_step(acc: ptr<function, Block8x8>, lid: vec3<u32>) {
    for (var kk = 0u; kk < GEMM_K; kk++) {
        let a0 = gemm_rows[kk * 16u + lid.y * 2u];
        let a1 = gemm_rows[kk * 16u + lid.y * 2u + 1u];
        let b0 = gemm_cols[kk * 16u + lid.x * 2u];
        let b1 = gemm_cols[kk * 16u + lid.x * 2u + 1u];
        block_fma(acc, a0, a1, b0, b1);
    }
}
