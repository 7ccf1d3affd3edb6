// weights_packed.wgsl: f16 weights packed two per u32 (element 2k in the low half), for adapters
// without shader-f16. The buffer bytes are the same as the native f16 path's.
alias WEIGHT_STORE = u32;

fn load_weight(i: u32) -> f32 {
    return unpack2x16float(weights[i >> 1u])[i & 1u];
}
