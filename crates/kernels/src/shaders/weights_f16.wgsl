// weights_f16.wgsl: f16 weights read natively (needs `enable f16;`, added by shader.rs).
alias WEIGHT_STORE = f16;

fn load_weight(i: u32) -> f32 {
    return f32(weights[i]);
}
