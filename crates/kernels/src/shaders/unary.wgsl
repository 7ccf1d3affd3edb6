// unary.wgsl: kernels that read one tensor x and write y, one thread per output element:
// activations, scale, residual add, GEGLU, nearest upsampling, and the NCHW <-> token-major
// layout changes of the transformer blocks.

struct Params {
    len: u32,    // output elements
    dim0: u32,   // meaning per entry point, see each
    dim1: u32,
    dim2: u32,
    dim3: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

fn element(gid: vec3<u32>, num_groups: vec3<u32>) -> u32 {
    return linear_index(gid, num_groups, WG);
}

@compute @workgroup_size(256)
fn act_silu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i < p.len) { y[i] = silu(x[i]); }
}

@compute @workgroup_size(256)
fn act_gelu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i < p.len) { y[i] = gelu_erf(x[i]); }
}

@compute @workgroup_size(256)
fn act_gelu_tanh(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i < p.len) { y[i] = gelu_tanh(x[i]); }
}

@compute @workgroup_size(256)
fn act_quick_gelu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i < p.len) { y[i] = quick_gelu(x[i]); }
}

// y = x * alpha.
@compute @workgroup_size(256)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i < p.len) { y[i] = x[i] * p.alpha; }
}

// In place: y = (y + x) * alpha (a ResNet's `(input + hidden) / output_scale_factor`).
@compute @workgroup_size(256)
fn residual_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i < p.len) { y[i] = (y[i] + x[i]) * p.alpha; }
}

// x [planes, dim0 = H, dim1 = W] -> y [planes, dim2 = OH, dim3 = OW], nearest neighbour:
// source row floor(oy * H / OH), as torch's interpolate(size=...) (exactly oy / 2 for 2x; other
// sizes occur when a skip connection is odd-sized).
@compute @workgroup_size(256)
fn upsample_nearest(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i >= p.len) { return; }
    let plane = i / (p.dim2 * p.dim3);
    let oy = (i / p.dim3) % p.dim2;
    let ox = i % p.dim3;
    y[i] = x[(plane * p.dim0 + oy * p.dim0 / p.dim2) * p.dim1 + ox * p.dim1 / p.dim3];
}

// x [N, dim0 = C, dim1 = L] -> y [N, L, C].
@compute @workgroup_size(256)
fn nchw_to_nlc(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i >= p.len) { return; }
    let c = i % p.dim0;
    let l = (i / p.dim0) % p.dim1;
    let n = i / (p.dim0 * p.dim1);
    y[i] = x[(n * p.dim0 + c) * p.dim1 + l];
}

// x [N, dim1 = L, dim0 = C] -> y [N, C, L].
@compute @workgroup_size(256)
fn nlc_to_nchw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = element(gid, ng);
    if (i >= p.len) { return; }
    let l = i % p.dim1;
    let c = (i / p.dim1) % p.dim0;
    let n = i / (p.dim0 * p.dim1);
    y[i] = x[(n * p.dim1 + l) * p.dim0 + c];
}
