// binary.wgsl: kernels that read two tensors a, b and write y, one thread per output element.

struct Params {
    len: u32,   // output elements
    dim0: u32,  // meaning per entry point, see each
    dim1: u32,
    dim2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = linear_index(gid, ng, WG);
    if (i < p.len) { y[i] = a[i] + b[i]; }
}

@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = linear_index(gid, ng, WG);
    if (i < p.len) { y[i] = a[i] * b[i]; }
}

// a [N, dim0 = Ca, dim2 = L], b [N, dim1 = Cb, L] -> y [N, Ca + Cb, L] (skip connections).
@compute @workgroup_size(256)
fn concat_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = linear_index(gid, ng, WG);
    if (i >= p.len) { return; }
    let channels = p.dim0 + p.dim1;
    let l = i % p.dim2;
    let c = (i / p.dim2) % channels;
    let n = i / (p.dim2 * channels);
    if (c < p.dim0) {
        y[i] = a[(n * p.dim0 + c) * p.dim2 + l];
    } else {
        y[i] = b[(n * p.dim1 + c - p.dim0) * p.dim2 + l];
    }
}

// a: timesteps [N], b: frequencies [dim0 / 2] -> y [N, dim0], diffusers' get_timestep_embedding.
// The frequencies exp(-ln(10000) j / (half - freq_shift)) come from the CPU in f64 rounded to
// f32, as torch computes them; a GPU exp would be off by ulps that t = 999 magnifies. [sin, cos]
// halves, swapped when dim1 (flip_sin_to_cos) is 1; an odd dim0 leaves the last column zero.
@compute @workgroup_size(256)
fn timestep_embedding(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = linear_index(gid, ng, WG);
    if (i >= p.len) { return; }
    let half = p.dim0 / 2u;
    let col = i % p.dim0;
    if (col >= 2u * half) {
        y[i] = 0.0;
        return;
    }
    let arg = reduce_angle(a[i / p.dim0] * b[col % half]);
    let sin_first = p.dim1 == 0u;
    y[i] = select(cos(arg), sin(arg), (col < half) == sin_first);
}
