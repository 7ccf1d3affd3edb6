// layer_norm.wgsl: layer norm over the last dimension, one workgroup per row, two-pass f32
// statistics.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // [rows, dim]
@group(0) @binding(2) var<storage, read> gamma: array<f32>;   // [dim]
@group(0) @binding(3) var<storage, read> beta: array<f32>;    // [dim]
@group(0) @binding(4) var<storage, read_write> y: array<f32>; // [rows, dim]

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) num_groups: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    // Uniform per workgroup, so the barriers inside workgroup_sum stay in uniform control flow.
    let row = wid.x + wid.y * num_groups.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var sum = 0.0;
    for (var i = lid; i < p.dim; i += REDUCE_WG) {
        sum += x[base + i];
    }
    let mean = workgroup_sum(lid, sum) / f32(p.dim);
    var sq = 0.0;
    for (var i = lid; i < p.dim; i += REDUCE_WG) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(lid, sq) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += REDUCE_WG) {
        y[base + i] = (x[base + i] - mean) * rstd * gamma[i] + beta[i];
    }
}
