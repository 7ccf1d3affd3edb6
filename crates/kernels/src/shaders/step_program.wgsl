// step_program.wgsl: a sampler step, one thread per latent element, as a small program
// (sd_core::sampler::program): instructions [op, dst, a, b] over 16 registers. The host runs
// the same instructions in the same order (`Bytecode::run`).

struct Params {
    len: u32,           // latent elements
    instructions: u32,  // instructions in `code`
    mask_len: u32,      // mask values (one per pixel) after the image and its noise in `image`
    guided: u32,        // 1: output = u + guidance * (c - u); 0: output = c
    cond_offset: u32,   // where this image's (conditional) prediction starts in `prediction`
    uncond_offset: u32, // where its unconditional prediction starts
    guidance: f32,
    _pad: u32,
    code: array<vec4<u32>, 64>,
    constants: array<vec4<f32>, 8>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> sample: array<f32>;
@group(0) @binding(2) var<storage, read> prediction: array<f32>;
@group(0) @binding(3) var<storage, read> noise: array<f32>;
// The kept buffers, packed: kept k at [k * len, (k + 1) * len).
@group(0) @binding(4) var<storage, read> kept: array<f32>;
// The clean image latents, the noise they started from, then the mask.
@group(0) @binding(5) var<storage, read> image: array<f32>;
@group(0) @binding(6) var<storage, read_write> next: array<f32>;
@group(0) @binding(7) var<storage, read_write> kept_out: array<f32>;

const WG: u32 = 256u;

fn constant(c: u32) -> f32 {
    return p.constants[c / 4u][c % 4u];
}

// The model output after classifier-free guidance, in the host's order of operations.
fn model_output(i: u32) -> f32 {
    let c = prediction[p.cond_offset + i];
    if (p.guided == 0u) {
        return c;
    }
    let u = prediction[p.uncond_offset + i];
    return u + p.guidance * (c - u);
}

@compute @workgroup_size(256)
fn step_program(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = linear_index(gid, ng, WG);
    if (i >= p.len) { return; }
    var r: array<f32, 16>;
    for (var pc = 0u; pc < p.instructions; pc++) {
        let ins = p.code[pc];
        let dst = ins.y;
        switch ins.x {
            case 0u: { r[dst] = sample[i]; }
            case 1u: { r[dst] = model_output(i); }
            case 2u: { r[dst] = noise[i]; }
            case 3u: { r[dst] = kept[ins.z * p.len + i]; }
            case 4u: { r[dst] = image[i]; }
            case 5u: { r[dst] = image[p.len + i]; }
            case 6u: { r[dst] = image[2u * p.len + i % p.mask_len]; }
            case 7u: { r[dst] = constant(ins.z); }
            case 8u: { r[dst] = r[ins.z] + r[ins.w]; }
            case 9u: { r[dst] = r[ins.z] - r[ins.w]; }
            case 10u: { r[dst] = r[ins.z] * r[ins.w]; }
            case 11u: { r[dst] = r[ins.z] / r[ins.w]; }
            case 12u: { r[dst] = clamp(r[ins.z], -constant(ins.w), constant(ins.w)); }
            case 13u: { next[i] = r[ins.z]; }
            case 14u: { kept_out[dst * p.len + i] = r[ins.z]; }
            default: {}
        }
    }
}
