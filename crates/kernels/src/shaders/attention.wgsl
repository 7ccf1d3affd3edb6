// attention.wgsl: softmax(Q K^T * scale) V for several heads, self or cross, optional causal
// mask (CLIP). Flash-style: keys and values stream through shared memory BLOCK_K at a time and
// each query keeps a running max and sum (online softmax), so no buffer ever holds more than one
// block of scores. SD 1.5 at 512x512 (4096 tokens) needs nothing beyond q, k, v and the output.
//
// One thread per query row; a workgroup is QUERY_ROWS consecutive queries of one head of one
// batch item. HEAD_DIM and BLOCK_K are template constants (private array sizes must be
// constant); BLOCK_K is chosen by the launcher so the two shared tiles fit WebGPU's default
// 16 KiB of workgroup memory.

struct Params {
    batch: u32,
    heads: u32,
    q_len: u32,
    kv_len: u32,
    q_stride: u32,   // elements between consecutive tokens of q (heads * HEAD_DIM when packed)
    kv_stride: u32,  // same for k and v
    o_stride: u32,   // same for the output
    causal: u32,     // 1: query i sees keys 0..=i
    scale: f32,      // usually 1 / sqrt(HEAD_DIM)
    q_offset: u32,   // first feature of q in each token (q, k, v side by side in one tensor)
    k_offset: u32,
    v_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;       // [batch, q_len, q_stride], head h at q_offset + h * HEAD_DIM
@group(0) @binding(2) var<storage, read> k: array<f32>;       // [batch, kv_len, kv_stride]
@group(0) @binding(3) var<storage, read> v: array<f32>;       // [batch, kv_len, kv_stride]
@group(0) @binding(4) var<storage, read_write> o: array<f32>; // [batch, q_len, o_stride]

const HEAD_DIM: u32 = {{HEAD_DIM}};
const HEAD_VEC: u32 = {{HEAD_VEC}}; // HEAD_DIM / 4 rounded up: q, k, v and acc are held as vec4
const BLOCK_K: u32 = {{BLOCK_K}};
const QUERY_ROWS: u32 = 64u;

var<workgroup> k_tile: array<vec4<f32>, BLOCK_K * HEAD_VEC>;
var<workgroup> v_tile: array<vec4<f32>, BLOCK_K * HEAD_VEC>;

// Four consecutive elements of a head's row, zero past HEAD_DIM.
fn load4(src: u32, base: u32, c: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let d = 4u * c + i;
        if (d < HEAD_DIM) {
            switch src {
                case 0u: { r[i] = q[base + p.q_offset + d]; }
                case 1u: { r[i] = k[base + p.k_offset + d]; }
                default: { r[i] = v[base + p.v_offset + d]; }
            }
        }
    }
    return r;
}

@compute @workgroup_size(64)
fn attention(@builtin(local_invocation_index) lid: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let head = wid.y;
    let n = wid.z;
    let query = wid.x * QUERY_ROWS + lid;
    let has_query = query < p.q_len;

    var qv: array<vec4<f32>, HEAD_VEC>;
    var acc: array<vec4<f32>, HEAD_VEC>;
    if (has_query) {
        let base = (n * p.q_len + query) * p.q_stride + head * HEAD_DIM;
        for (var c = 0u; c < HEAD_VEC; c++) {
            qv[c] = load4(0u, base, c) * p.scale;
        }
    }
    var running_max = -3.0e38;
    var running_sum = 0.0;

    // Under the causal mask no query of this workgroup sees past its last row.
    var key_end = p.kv_len;
    if (p.causal != 0u) {
        key_end = min(p.kv_len, wid.x * QUERY_ROWS + QUERY_ROWS);
    }
    for (var key0 = 0u; key0 < key_end; key0 += BLOCK_K) {
        for (var e = lid; e < BLOCK_K * HEAD_VEC; e += QUERY_ROWS) {
            let key = key0 + e / HEAD_VEC;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (key < p.kv_len) {
                let base = (n * p.kv_len + key) * p.kv_stride + head * HEAD_DIM;
                kv = load4(1u, base, e % HEAD_VEC);
                vv = load4(2u, base, e % HEAD_VEC);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();

        if (has_query) {
            var scores: array<f32, BLOCK_K>;
            var block_max = -3.0e38;
            var keys = min(BLOCK_K, p.kv_len - key0);
            if (p.causal != 0u && query + 1u < key0 + keys) {
                keys = select(0u, query + 1u - key0, query + 1u > key0);
            }
            for (var j = 0u; j < keys; j++) {
                var s = vec4<f32>(0.0);
                for (var c = 0u; c < HEAD_VEC; c++) {
                    s += qv[c] * k_tile[j * HEAD_VEC + c];
                }
                scores[j] = s.x + s.y + s.z + s.w;
                block_max = max(block_max, scores[j]);
            }
            if (keys > 0u) {
                let new_max = max(running_max, block_max);
                let correction = exp(running_max - new_max);
                running_sum *= correction;
                for (var c = 0u; c < HEAD_VEC; c++) {
                    acc[c] *= correction;
                }
                for (var j = 0u; j < keys; j++) {
                    let w = exp(scores[j] - new_max);
                    running_sum += w;
                    for (var c = 0u; c < HEAD_VEC; c++) {
                        acc[c] += w * v_tile[j * HEAD_VEC + c];
                    }
                }
                running_max = new_max;
            }
        }
        workgroupBarrier();
    }

    if (has_query) {
        let base = (n * p.q_len + query) * p.o_stride + head * HEAD_DIM;
        let inv = 1.0 / running_sum;
        for (var d = 0u; d < HEAD_DIM; d++) {
            o[base + d] = acc[d / 4u][d % 4u] * inv;
        }
    }
}
