// group_norm.wgsl: group norm y = (x - mean) / std * gamma + beta with optional fused SiLU.
// Two-pass statistics in f32 (mean, then squared deviations): one-pass E[x^2] - E[x]^2 loses
// digits on the long groups of a VAE at full resolution.
//
// Two ways to run it (ops::group_norm picks by group length):
// - `group_norm_fused`: one workgroup per (group, batch item) computes the statistics and
//   applies them, one dispatch. Short groups (all of the UNet's) fit one workgroup well.
// - `group_norm_stats` then `group_norm_apply`: the same statistics, then a fully parallel
//   apply, for the long groups of a VAE at full resolution, where one workgroup per group
//   would also have to write megabytes alone.
//
// Channel chunking: a chunk holds whole groups; `c_offset` points gamma/beta at its channels.
//
// Two inputs: the norm of `torch.cat([x, x2], dim=1)` read in place (a UNet up block's ResNet
// input, its skip connection beside it), the first `x_channels` channels from x, the rest from
// x2; a group may straddle the two. One input: `x_channels == channels`, x2 is not read.

struct Params {
    batch: u32,
    channels: u32,  // channels in this tensor (or chunk)
    spatial: u32,   // H * W
    groups: u32,    // groups in this tensor (or chunk)
    eps: f32,
    silu: u32,      // 1: apply SiLU after the affine
    c_offset: u32,  // first channel of gamma/beta for this chunk
    x_channels: u32, // channels read from x; the rest from x2
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // [batch, x_channels, spatial]
@group(0) @binding(2) var<storage, read> x2: array<f32>;          // [batch, channels - x_channels, spatial]
@group(0) @binding(3) var<storage, read_write> stats: array<f32>; // [batch, groups, 2]: mean, 1/std
@group(0) @binding(4) var<storage, read> gamma: array<f32>;       // [C]
@group(0) @binding(5) var<storage, read> beta: array<f32>;        // [C]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;     // [batch, channels, spatial]

// Element j of item n of the (concatenated) input, j counting NCHW-contiguously in the item.
fn load(n: u32, j: u32) -> f32 {
    let x_len = p.x_channels * p.spatial;
    if (j < x_len) {
        return x[n * x_len + j];
    }
    let x2_len = (p.channels - p.x_channels) * p.spatial;
    return x2[n * x2_len + j - x_len];
}

// Mean and 1/std of one (batch item, group), stored in `stats` and returned (every thread of
// the workgroup gets them). The channels of a group are contiguous in NCHW.
fn group_statistics(lid: u32, n: u32, group: u32) -> vec2<f32> {
    let count = (p.channels / p.groups) * p.spatial;
    let first = group * count;
    var sum = 0.0;
    for (var i = lid; i < count; i += REDUCE_WG) {
        sum += load(n, first + i);
    }
    let mean = workgroup_sum(lid, sum) / f32(count);
    var sq = 0.0;
    for (var i = lid; i < count; i += REDUCE_WG) {
        let d = load(n, first + i) - mean;
        sq += d * d;
    }
    let variance = workgroup_sum(lid, sq) / f32(count);
    let inv_std = inverseSqrt(variance + p.eps);
    if (lid == 0u) {
        stats[(n * p.groups + group) * 2u] = mean;
        stats[(n * p.groups + group) * 2u + 1u] = inv_std;
    }
    return vec2<f32>(mean, inv_std);
}

// The affine (and SiLU) of value `v` of channel `c`, with the group's mean and 1/std.
fn normalized(value: f32, c: u32, m: vec2<f32>) -> f32 {
    var v = (value - m.x) * m.y * gamma[p.c_offset + c] + beta[p.c_offset + c];
    if (p.silu != 0u) {
        v = silu(v);
    }
    return v;
}

// One workgroup per (group, batch item).
@compute @workgroup_size(256)
fn group_norm_stats(@builtin(local_invocation_index) lid: u32,
                    @builtin(workgroup_id) wid: vec3<u32>) {
    _ = group_statistics(lid, wid.y, wid.x);
}

// One workgroup per (group, batch item): statistics, then the affine over the same elements.
@compute @workgroup_size(256)
fn group_norm_fused(@builtin(local_invocation_index) lid: u32,
                    @builtin(workgroup_id) wid: vec3<u32>) {
    let group = wid.x;
    let n = wid.y;
    let m = group_statistics(lid, n, group);
    let group_size = p.channels / p.groups;
    let count = group_size * p.spatial;
    let first = group * count;
    let base = n * p.groups * count + first;
    for (var i = lid; i < count; i += REDUCE_WG) {
        let c = group * group_size + i / p.spatial;
        y[base + i] = normalized(load(n, first + i), c, m);
    }
}

@compute @workgroup_size(256)
fn group_norm_apply(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) num_groups: vec3<u32>) {
    let i = linear_index(gid, num_groups, 256u);
    if (i >= p.batch * p.channels * p.spatial) {
        return;
    }
    let c = (i / p.spatial) % p.channels;
    let n = i / (p.spatial * p.channels);
    let s = (n * p.groups + c / (p.channels / p.groups)) * 2u;
    let j = i - n * p.spatial * p.channels;
    y[i] = normalized(load(n, j), c, vec2<f32>(stats[s], stats[s + 1u]));
}
