// conv2d.wgsl: 2-D convolution, NCHW, as an implicit GEMM: rows are output channels, columns are
// the batch's output pixels (batch item, then pixel, so small latents fill more of a tile),
// depth is kernel taps x input channels.
//
// A workgroup of 8x8 threads computes 64 output channels x 64 columns; each thread an 8x8 block
// in registers (`Block8x8`, common.wgsl: four FMAs per shared-memory read). The input is
// gathered (im2col) into shared memory 32 input channels at a time, never materialised. The depth loop runs tap by tap, channels inside: a
// thread's column, and per tap its input row and column, are worked out once, so a gathered
// element costs an add and a compare, not the divisions of a flat depth index.
//
// Channel chunking: a tensor too large for one binding is split by channels into several
// buffers. `ic_offset` selects which input channels of the weight this input chunk holds, and
// `accumulate` adds to the output instead of starting from the bias, so an output chunk is the
// sum of one dispatch per input chunk. `oc_offset` selects the output channels of the chunk.
//
// Layouts: x and y are NCHW, or channels-last (token-major, `[batch, h * w, channels]`) where
// `x_tokens` / `y_tokens` say so: a transformer's 1x1 `proj_in` writes its tokens and `proj_out`
// reads them, so no transpose pass sits between (whole tensors only).

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
    epilogue: u32,           // 1: then y = (y + residual) * residual_factor (the last chunk only);
                             // 2: y += residual[n, bias_offset + oc] (a time embedding, whole
                             // tensors only; residual is [batch, bias_width])
    residual_factor: f32,
    x_tokens: u32,           // 1: x is [batch, in_h * in_w, in_channels]
    y_tokens: u32,           // 1: y (and the residual) are [batch, out_h * out_w, out_channels]
    bias_width: u32,         // epilogue 2: columns per item of the channel bias
    bias_offset: u32,        // epilogue 2: its first column for this convolution
    x_channels: u32,         // input channels read from x; the rest from x2 (NCHW, whole tensors)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;                // [batch, in_channels, in_h, in_w] (or channels last)
@group(0) @binding(2) var<storage, read> weights: array<WEIGHT_STORE>; // [OC, weight_in_channels, kernel_h, kernel_w]
@group(0) @binding(3) var<storage, read> bias: array<f32>;             // [OC]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;          // [batch, out_channels, out_h, out_w]
@group(0) @binding(5) var<storage, read> residual: array<f32>;         // as y
@group(0) @binding(6) var<storage, read> x2: array<f32>;               // [batch, in_channels - x_channels, in_h, in_w]

// The tiles (common.wgsl): rows are output channels (weights), columns the gathered inputs.

@compute @workgroup_size(8, 8)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let col0 = wid.x * GEMM_TILE;
    let oc0 = wid.y * GEMM_TILE;
    let tid = lid.y * 8u + lid.x;
    let taps = p.kernel_h * p.kernel_w;
    let plane = p.in_h * p.in_w;
    let pixels = p.out_h * p.out_w;

    // Loaders: thread tid brings output channel tid's weights and column tid's inputs for the
    // step's 32 input channels.
    let oc = oc0 + tid;
    let w_row = ((p.oc_offset + oc) * p.weight_in_channels + p.ic_offset) * taps;
    let column = col0 + tid;
    let n = column / pixels;
    let pixel = column % pixels;
    let oy = i32((pixel / p.out_w) * p.stride) - i32(p.pad);
    let ox = i32((pixel % p.out_w) * p.stride) - i32(p.pad);
    // The input is `torch.cat([x, x2], dim=1)` read in place (a ResNet's shortcut over its
    // input and skip connection), or x alone (`x_channels == in_channels`).
    let x_batch = n * p.x_channels * plane;
    let x2_batch = n * (p.in_channels - p.x_channels) * plane;
    // Strides of x between pixels and between channels.
    var x_pixel = 1u;
    var x_channel = plane;
    if (p.x_tokens != 0u) {
        x_pixel = p.in_channels;
        x_channel = 1u;
    }

    // Row i of acc: output channel lid.y * 8 + i, columns lid.x * 8 .. +8.
    var acc: Block8x8;
    for (var tap = 0u; tap < taps; tap++) {
        let ky = tap / p.kernel_w;
        let iy = oy + i32(ky);
        let ix = ox + i32(tap - ky * p.kernel_w);
        let inside = n < p.batch && iy >= 0 && ix >= 0 && iy < i32(p.in_h) && ix < i32(p.in_w);
        let at = u32(max(iy, 0)) * p.in_w + u32(max(ix, 0));
        let x_at = x_batch + at * x_pixel;
        let x2_at = x2_batch + at;
        for (var c0 = 0u; c0 < p.in_channels; c0 += GEMM_K) {
            for (var i = 0u; i < GEMM_K; i++) {
                let c = c0 + i;
                var w = 0.0;
                if (oc < p.out_channels && c < p.in_channels) {
                    w = load_weight(w_row + c * taps + tap);
                }
                var xv = 0.0;
                if (inside && c < p.x_channels) {
                    xv = x[x_at + c * x_channel];
                } else if (inside && c < p.in_channels) {
                    xv = x2[x2_at + (c - p.x_channels) * plane];
                }
                gemm_put(i, tid, w, xv);
            }
            workgroupBarrier();
            gemm_step(&acc, lid);
            workgroupBarrier();
        }
    }

    for (var i = 0u; i < 8u; i++) {
        store_row(oc0 + lid.y * 8u + i, col0 + lid.x * 8u, block_row(acc, i));
    }
}

// Writes eight consecutive columns (batch item, pixel) of output channel `oc`: bias (or what a
// previous channel chunk left) plus the sums, then the residual connection where there is one
// (fused here instead of a pass of its own), skipping what lies outside the tensor.
fn store_row(oc: u32, column: u32, sums: array<f32, 8>) {
    if (oc >= p.out_channels) {
        return;
    }
    let pixels = p.out_h * p.out_w;
    var start = 0.0;
    if (p.has_bias != 0u) {
        start = bias[p.oc_offset + oc];
    }
    for (var j = 0u; j < 8u; j++) {
        let n = (column + j) / pixels;
        if (n < p.batch) {
            let pixel = (column + j) % pixels;
            var index = (n * p.out_channels + oc) * pixels + pixel;
            if (p.y_tokens != 0u) {
                index = (n * pixels + pixel) * p.out_channels + oc;
            }
            var base = start;
            if (p.accumulate != 0u) {
                base = y[index];
            }
            var v = base + sums[j];
            if (p.epilogue == 1u) {
                v = (v + residual[index]) * p.residual_factor;
            } else if (p.epilogue == 2u) {
                v += residual[n * p.bias_width + p.bias_offset + oc];
            }
            y[index] = v;
        }
    }
}
