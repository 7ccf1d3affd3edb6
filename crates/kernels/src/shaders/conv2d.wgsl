// conv2d.wgsl: 2-D convolution, NCHW, as an implicit GEMM: rows are output channels, columns are
// output pixels, depth is in_channels * kernel_h * kernel_w (the weight's own memory order).
//
// A workgroup of 16x16 threads computes 64 output channels x 64 output pixels of one batch item;
// each thread a 4x4 block in registers. The input is gathered (im2col) into shared memory 16
// depth steps at a time, never materialised.
//
// Channel chunking: a tensor too large for one binding is split by channels into several
// buffers. `ic_offset` selects which input channels of the weight this input chunk holds, and
// `accumulate` adds to the output instead of starting from the bias, so an output chunk is the
// sum of one dispatch per input chunk. `oc_offset` selects the output channels of the chunk.

struct Params {
    batch: u32,
    in_channels: u32,        // channels in this input chunk
    in_h: u32,
    in_w: u32,
    out_channels: u32,       // channels in this output chunk
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride: u32,
    pad: u32,                // zeros before; those after follow from out_h and out_w
    weight_in_channels: u32, // input channels of the whole weight
    ic_offset: u32,          // first weight input channel of this input chunk
    oc_offset: u32,          // first weight output channel of this output chunk
    accumulate: u32,         // 1: y += conv; 0: y = bias + conv
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;                // [batch, in_channels, in_h, in_w]
@group(0) @binding(2) var<storage, read> weights: array<WEIGHT_STORE>; // [OC, weight_in_channels, kernel_h, kernel_w]
@group(0) @binding(3) var<storage, read> bias: array<f32>;             // [OC]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;          // [batch, out_channels, out_h, out_w]

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> w_tile: array<vec4<f32>, 256>; // [k][oc / 4]
var<workgroup> x_tile: array<vec4<f32>, 256>; // [k][pixel / 4]

fn load_input(n: u32, k: u32, pixel: u32) -> f32 {
    let taps = p.kernel_h * p.kernel_w;
    if (k >= p.in_channels * taps || pixel >= p.out_h * p.out_w) {
        return 0.0;
    }
    let ic = k / taps;
    let tap = k % taps;
    let iy = i32((pixel / p.out_w) * p.stride + tap / p.kernel_w) - i32(p.pad);
    let ix = i32((pixel % p.out_w) * p.stride + tap % p.kernel_w) - i32(p.pad);
    if (iy < 0 || ix < 0 || iy >= i32(p.in_h) || ix >= i32(p.in_w)) {
        return 0.0;
    }
    return x[((n * p.in_channels + ic) * p.in_h + u32(iy)) * p.in_w + u32(ix)];
}

@compute @workgroup_size(16, 16)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let pixel0 = wid.x * TILE;
    let oc0 = wid.y * TILE;
    let n = wid.z;
    let tid = lid.y * 16u + lid.x;
    let depth = p.in_channels * p.kernel_h * p.kernel_w;
    let weight_row = p.weight_in_channels * p.kernel_h * p.kernel_w;
    let weight_col0 = p.ic_offset * p.kernel_h * p.kernel_w;

    // Weight loader: output channel tid / 4, depth quad tid % 4.
    let w_oc = tid / 4u;
    let w_k = (tid % 4u) * 4u;
    // Input loader: pixel tid % 64, depth quad tid / 64.
    let x_pixel = tid % TILE;
    let x_k = (tid / TILE) * 4u;

    var acc: array<vec4<f32>, 4>; // acc[i][j]: channel lid.y*4+i, pixel lid.x*4+j
    for (var k0 = 0u; k0 < depth; k0 += TILE_K) {
        let oc = oc0 + w_oc;
        for (var i = 0u; i < 4u; i++) {
            let k = k0 + w_k + i;
            var w = 0.0;
            if (oc < p.out_channels && k < depth) {
                w = load_weight((p.oc_offset + oc) * weight_row + weight_col0 + k);
            }
            w_tile[(w_k + i) * 16u + w_oc / 4u][w_oc % 4u] = w;
            x_tile[(x_k + i) * 16u + x_pixel / 4u][x_pixel % 4u] =
                load_input(n, k0 + x_k + i, pixel0 + x_pixel);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = w_tile[kk * 16u + lid.y];
            let b = x_tile[kk * 16u + lid.x];
            acc[0] += a[0] * b;
            acc[1] += a[1] * b;
            acc[2] += a[2] * b;
            acc[3] += a[3] * b;
        }
        workgroupBarrier();
    }

    let pixels = p.out_h * p.out_w;
    for (var i = 0u; i < 4u; i++) {
        let oc = oc0 + lid.y * 4u + i;
        if (oc >= p.out_channels) {
            break;
        }
        var start = 0.0;
        if (p.has_bias != 0u) {
            start = bias[p.oc_offset + oc];
        }
        for (var j = 0u; j < 4u; j++) {
            let pixel = pixel0 + lid.x * 4u + j;
            if (pixel < pixels) {
                let index = (n * p.out_channels + oc) * pixels + pixel;
                var base = start;
                if (p.accumulate != 0u) {
                    base = y[index];
                }
                y[index] = base + acc[i][j];
            }
        }
    }
}
