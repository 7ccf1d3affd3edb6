//! The cost model and the trace of the plan, without a GPU: SD 1.5 at 512x512 with CFG costs
//! what independent counts from the diffusers configs say, and for every fixture and published
//! config the planner records the same ops, by path and kind, as the cost recorder (both read
//! the same walk; this catches a recorder that drops, adds or renames an op).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_test_support::fixtures;

use sd_models::cost::{OpCost, cost};
use sd_models::plan::{DeviceLimits, OpKind, Part, PlanRequest, plan};

use super::{TestResult, load_configs};

fn published() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/configs")
}

fn part_flops(ops: &[OpCost]) -> f64 {
    ops.iter().map(|o| o.flops as f64).sum()
}

#[test]
fn sd15_at_512_with_cfg_costs_the_independent_counts() -> TestResult {
    let configs = load_configs(&fixtures().join("configs/sd15"))?;
    let parts = cost(&configs.configs(), &PlanRequest::new(512, 512))?;
    let flops = |part: Part| -> Result<f64, String> {
        parts
            .iter()
            .find(|p| p.part == part)
            .map(|p| part_flops(&p.ops))
            .ok_or_else(|| format!("no {part:?}"))
    };
    let unet = flops(Part::UNet)?;
    let decode = flops(Part::VaeDecoder)?;
    println!(
        "SD 1.5, 512x512, CFG: UNet call {:.4} TFLOP, VAE decode {:.4} TFLOP",
        unet / 1e12,
        decode / 1e12
    );
    // Counted independently from the diffusers configs (convolutions and matrix products,
    // 2 FLOP per multiply-add): 1.61 and 2.51 TFLOP.
    for (label, got, want) in [("UNet", unet, 1.61e12), ("VAE decode", decode, 2.51e12)] {
        let off = (got - want).abs() / want;
        assert!(
            off <= 0.02,
            "{label}: {got:e} is {:.2}% off {want:e}",
            off * 100.0
        );
    }
    // The biggest ops are the two upsamplers' convolutions that produce full-size tensors:
    // 512 channels at 256x256 and 256 channels at 512x512, the same work.
    let decoder = parts
        .iter()
        .find(|p| p.part == Part::VaeDecoder)
        .ok_or("no decoder")?;
    let most = decoder.ops.iter().map(|o| o.flops).max().ok_or("no ops")?;
    let top: Vec<&str> = decoder
        .ops
        .iter()
        .filter(|o| o.flops == most)
        .map(|o| o.path.as_str())
        .collect();
    assert_eq!(
        top,
        [
            "decoder.up_blocks.1.upsamplers.0.conv",
            "decoder.up_blocks.2.upsamplers.0.conv"
        ]
    );
    assert_eq!(most, 2 * 256 * 256 * 512 * 512 * 9);
    Ok(())
}

/// Issue 17's dispatch budgets: an SD 1.5 UNet call at 512x512 with CFG in at most 300
/// dispatches, a VAE decode in at most 250, as the cost model counts them unsplit (the trace
/// test holds the GPU recorder to the same counts, op by op); and today's counts, pinned, so a
/// change that adds dispatches says so here.
#[test]
fn sd15_at_512_fits_the_dispatch_budgets() -> TestResult {
    let configs = load_configs(&fixtures().join("configs/sd15"))?;
    let parts = cost(&configs.configs(), &PlanRequest::new(512, 512))?;
    for (part, budget, today) in [(Part::UNet, 300, 296), (Part::VaeDecoder, 250, 90)] {
        let dispatches = parts
            .iter()
            .find(|p| p.part == part)
            .map(|p| p.dispatches())
            .ok_or_else(|| format!("no {part:?}"))?;
        println!("{part:?}: {dispatches} dispatches (budget {budget})");
        assert!(
            dispatches <= budget,
            "{part:?}: {dispatches} dispatches, over the budget of {budget}"
        );
        assert_eq!(
            dispatches, today,
            "{part:?}: the count changed; update it here"
        );
    }
    Ok(())
}

/// `(path, kind)` of the plan's ops of `part` (group-norm statistics are part of the norm, and
/// inputs and outputs are not ops of the cost model).
fn planned_ops(plan: &sd_models::plan::MemoryPlan, part: Part) -> Vec<(String, &'static str)> {
    let Some(p) = plan.part(part) else {
        return Vec::new();
    };
    let prefix = format!("{}.", part.prefix());
    p.ops
        .iter()
        .filter(|op| {
            !matches!(
                op.kind,
                OpKind::Input | OpKind::Output | OpKind::GroupNormStats { .. }
            )
        })
        .map(|op| {
            let path = op.name.strip_prefix(&prefix).unwrap_or(&op.name).to_owned();
            (path, op.kind.label())
        })
        .collect()
}

#[test]
fn plan_and_cost_record_the_same_ops_for_every_model() -> TestResult {
    let no_limits = DeviceLimits {
        max_storage_binding: u64::MAX,
        max_buffer: u64::MAX,
    };
    let mut models: BTreeMap<String, (PathBuf, u32)> = BTreeMap::new();
    models.insert("digits".into(), (fixtures().join("tiny-sd-digits"), 64));
    for tiny in ["sd2-v", "turbo", "sdxl", "lcm", "inpaint9"] {
        models.insert(tiny.into(), (fixtures().join("tiny-arch").join(tiny), 64));
    }
    models.insert("sd15".into(), (fixtures().join("configs/sd15"), 512));
    for name in ["sd21", "sd-turbo", "sdxl", "sdxl-turbo"] {
        models.insert(name.into(), (published().join(name), 1024));
    }
    for (name, (folder, size)) in &models {
        let configs = load_configs(folder)?;
        let request = PlanRequest::new(*size, *size);
        let memory = plan(&configs.configs(), &request, &no_limits)?;
        let parts = cost(&configs.configs(), &request)?;
        assert_eq!(memory.parts.len(), parts.len(), "{name}");
        for part in &parts {
            let costed: Vec<(String, &'static str)> =
                part.ops.iter().map(|o| (o.path.clone(), o.kind)).collect();
            let planned = planned_ops(&memory, part.part);
            assert!(!costed.is_empty(), "{name} {:?}: no ops", part.part);
            assert_eq!(planned, costed, "{name} {:?}", part.part);
        }
        println!(
            "{name} at {size}: {} ops; UNet call {:.1} GFLOP",
            parts.iter().map(|p| p.ops.len()).sum::<usize>(),
            parts
                .iter()
                .find(|p| p.part == Part::UNet)
                .map_or(0.0, |p| p.flops() as f64 / 1e9)
        );
    }
    Ok(())
}
