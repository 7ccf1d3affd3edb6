// weights_f32.wgsl: f32 weights (parity tests). Kernels declare `weights: array<WEIGHT_STORE>`.
alias WEIGHT_STORE = f32;

fn load_weight(i: u32) -> f32 {
    return weights[i];
}
