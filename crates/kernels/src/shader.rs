//! Turning a kernel's `.wgsl` file into a module: the one templating step.
//!
//! A module is `enable f16;` (native f16 weights only), then `shaders/common.wgsl` (math helpers
//! shared by every kernel), then the weight-reading helper of the chosen storage type (kernels
//! that read weights name their binding `weights` and call `load_weight(i)`), then the kernel's
//! own source with its `{{NAME}}` placeholders replaced by integer constants. Placeholders exist
//! only where WGSL needs a const-expression (private array sizes); everything else comes from
//! the uniform parameters.

use std::collections::BTreeMap;

const COMMON: &str = include_str!("shaders/common.wgsl");
const WEIGHTS_F32: &str = include_str!("shaders/weights_f32.wgsl");
const WEIGHTS_F16: &str = include_str!("shaders/weights_f16.wgsl");
const WEIGHTS_PACKED: &str = include_str!("shaders/weights_packed.wgsl");

/// How a kernel reads its `weights` binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShaderVariant {
    /// The kernel has no `weights` binding.
    NoWeights,
    /// `array<f32>`.
    WeightsF32,
    /// `array<f16>` with `enable f16;` (adapters with `shader-f16`).
    WeightsF16,
    /// `array<u32>`, two f16 per word, read with `unpack2x16float` (adapters without it).
    WeightsPacked,
}

/// Builds the full WGSL source of a kernel. Fails if a placeholder has no value or a value has
/// no placeholder (a typo either way would otherwise surface as a confusing shader error).
pub fn compose_shader(
    source: &str,
    variant: ShaderVariant,
    consts: &BTreeMap<&'static str, u32>,
) -> Result<String, String> {
    let mut out = String::with_capacity(COMMON.len() + source.len() + 512);
    let helper = match variant {
        ShaderVariant::NoWeights => "",
        ShaderVariant::WeightsF32 => WEIGHTS_F32,
        ShaderVariant::WeightsF16 => {
            out.push_str("enable f16;\n");
            WEIGHTS_F16
        }
        ShaderVariant::WeightsPacked => WEIGHTS_PACKED,
    };
    out.push_str(COMMON);
    out.push_str(helper);

    let mut used = BTreeMap::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed placeholder near {:?}", &rest[start..]))?;
        let name = after[..end].trim();
        let value = consts
            .get(name)
            .ok_or_else(|| format!("placeholder {{{{{name}}}}} has no value"))?;
        out.push_str(&format!("{value}u"));
        used.insert(name, ());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(unused) = consts.keys().find(|k| !used.contains_key(*k)) {
        return Err(format!(
            "constant {unused} has no placeholder in the shader"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_checked() {
        let consts = BTreeMap::from([("HEAD_DIM", 40), ("BLOCK", 16)]);
        let src = "var<private> q: array<f32, {{HEAD_DIM}}>; const B = {{ BLOCK }};";
        let out = compose_shader(src, ShaderVariant::NoWeights, &consts).expect("valid template");
        assert!(out.ends_with("var<private> q: array<f32, 40u>; const B = 16u;"));
        assert!(!out.contains("enable f16"));

        let missing = compose_shader("{{NOPE}}", ShaderVariant::NoWeights, &consts);
        assert!(missing.expect_err("unknown placeholder").contains("NOPE"));
        let unused = compose_shader("{{BLOCK}}", ShaderVariant::NoWeights, &consts);
        assert!(unused.expect_err("unused constant").contains("HEAD_DIM"));
        let unclosed = compose_shader("{{BLOCK", ShaderVariant::NoWeights, &BTreeMap::new());
        assert!(unclosed.is_err());
    }

    #[test]
    fn f16_variant_starts_with_the_directive() {
        let out = compose_shader("", ShaderVariant::WeightsF16, &BTreeMap::new()).expect("ok");
        assert!(out.starts_with("enable f16;\n"));
        assert!(out.contains("array<f16>") || out.contains("WEIGHT_STORE = f16"));
        let packed =
            compose_shader("", ShaderVariant::WeightsPacked, &BTreeMap::new()).expect("ok");
        assert!(packed.contains("unpack2x16float"));
    }
}
