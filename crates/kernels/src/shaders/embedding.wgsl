// embedding.wgsl: CLIP's input embedding, token table gathered by id plus the position table.

struct Params {
    tokens: u32,   // batch * seq_len
    seq_len: u32,
    dim: u32,
    vocab: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;              // [batch, seq_len]
@group(0) @binding(2) var<storage, read> weights: array<WEIGHT_STORE>; // token table [vocab, dim]
@group(0) @binding(3) var<storage, read> positions: array<f32>;        // [>= seq_len, dim]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;          // [batch, seq_len, dim]

@compute @workgroup_size(256)
fn embedding(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) ng: vec3<u32>) {
    let i = linear_index(gid, ng, 256u);
    if (i >= p.tokens * p.dim) {
        return;
    }
    let token = i / p.dim;
    let d = i % p.dim;
    // Ids are checked on the CPU; the clamp only keeps a bad id from reading out of bounds.
    let id = min(ids[token], p.vocab - 1u);
    y[i] = load_weight(id * p.dim + d) + positions[(token % p.seq_len) * p.dim + d];
}
