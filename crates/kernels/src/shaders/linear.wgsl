// linear.wgsl: y = x W^T + b, the projection of every Linear layer (and 1x1 work on tokens).
//
// A workgroup of 16x16 threads computes a 64x64 tile of y; each thread a 4x4 block held in
// registers. K is walked in steps of 16 through shared memory. Each thread loads four
// consecutive k of one row of x and of W per step (vectorisable, coalesced along k).

struct Params {
    rows: u32,     // rows of x and y (batch dimensions flattened)
    n: u32,        // output features
    k: u32,        // input features
    has_bias: u32, // 0: bias is ignored
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;                // [rows, k]
@group(0) @binding(2) var<storage, read> weights: array<WEIGHT_STORE>; // [n, k]
@group(0) @binding(3) var<storage, read> bias: array<f32>;             // [n]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;          // [rows, n]

const TILE: u32 = 64u;   // rows and columns of the output tile
const TILE_K: u32 = 16u; // depth of one shared-memory step

// Transposed tiles, [k][row / 4] as vec4, so the inner loop reads 4 rows or columns at once.
var<workgroup> x_tile: array<vec4<f32>, 256>; // TILE_K * TILE / 4
var<workgroup> w_tile: array<vec4<f32>, 256>;

fn load_x4(row: u32, k0: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (row < p.rows) {
        let base = row * p.k;
        for (var i = 0u; i < 4u; i++) {
            if (k0 + i < p.k) {
                v[i] = x[base + k0 + i];
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

@compute @workgroup_size(16, 16)
fn linear(@builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tid = lid.y * 16u + lid.x;
    // Loader role: row (or column) tid / 4 of the tile, k quad tid % 4.
    let load_r = tid / 4u;
    let load_k = (tid % 4u) * 4u;

    var acc: array<vec4<f32>, 4>; // acc[i][j]: row lid.y*4+i, column lid.x*4+j
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        let xv = load_x4(row0 + load_r, k0 + load_k);
        let wv = load_w4(col0 + load_r, k0 + load_k);
        for (var i = 0u; i < 4u; i++) {
            x_tile[(load_k + i) * 16u + load_r / 4u][load_r % 4u] = xv[i];
            w_tile[(load_k + i) * 16u + load_r / 4u][load_r % 4u] = wv[i];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = x_tile[kk * 16u + lid.y];
            let b = w_tile[kk * 16u + lid.x];
            acc[0] += a[0] * b;
            acc[1] += a[1] * b;
            acc[2] += a[2] * b;
            acc[3] += a[3] * b;
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        if (row >= p.rows) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col < p.n) {
                var v = acc[i][j];
                if (p.has_bias != 0u) {
                    v += bias[col];
                }
                y[row * p.n + col] = v;
            }
        }
    }
}
