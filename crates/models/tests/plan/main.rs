//! The memory planner on real configs: SD 1.5 at 512x512 and 768x768 within WebGPU's default
//! limits, exact parameter counts of SD 1.5's three models, the planned weights of every
//! fixture model against its safetensors file, and the errors.
//!
//! Run with `--nocapture` to see the figures.

/// The cost model, in this binary to save a link.
mod cost;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use sd_core::config::CLIPTextConfig;
use sd_models::plan::{
    DeviceLimits, MemoryPlan, Part, PartPlan, PlanError, PlanRequest, Shape, UNetSize, plan,
    plan_unet, plan_vae_decoder,
};
use sd_models::{ModelSource, NetworkConfigFiles};
use sd_test_support::fixtures;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MIB: u64 = 1 << 20;

fn read(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// The network configs of a model folder.
fn load_configs(folder: &Path) -> Result<NetworkConfigFiles, Box<dyn std::error::Error>> {
    Ok(NetworkConfigFiles::read(&ModelSource::folder(folder))?)
}

fn sd15() -> Result<NetworkConfigFiles, Box<dyn std::error::Error>> {
    load_configs(&fixtures().join("configs/sd15"))
}

fn part(plan: &MemoryPlan, part: Part) -> Result<&PartPlan, String> {
    plan.part(part)
        .ok_or_else(|| format!("no {part:?} in the plan"))
}

/// Plans SD 1.5 at `size` x `size` with CFG and checks it against WebGPU's default limits.
fn sd15_fits(size: u32) -> Result<MemoryPlan, Box<dyn std::error::Error>> {
    let configs = sd15()?;
    let limits = DeviceLimits::WEBGPU_DEFAULT;
    let plan = plan(&configs.configs(), &PlanRequest::new(size, size), &limits)?;
    println!("SD 1.5 at {size}x{size}:\n{plan}");
    for p in &plan.parts {
        let s = &p.summary;
        println!(
            "  {}: peak at {}; {} pool buffers; largest binding {}; largest buffer {}",
            p.part.label(),
            s.peak_op,
            s.pool_buffers,
            s.largest_binding.name,
            s.largest_buffer.name
        );
    }
    assert_eq!(
        part(&plan, Part::UNet)?
            .tensor("unet.sample")
            .map(|t| t.shape.batch()),
        Some(2)
    );
    assert!(
        plan.largest_binding.bytes <= 128 * MIB,
        "a binding is over 128 MiB:\n{plan}"
    );
    assert!(
        plan.largest_buffer.bytes <= 256 * MIB,
        "a buffer is over 256 MiB:\n{plan}"
    );
    for p in &plan.parts {
        for op in &p.ops {
            for (role, name, bytes) in p.bindings(op) {
                assert!(
                    bytes <= 128 * MIB,
                    "{}: {role} {name} is {bytes} bytes",
                    op.name
                );
            }
        }
        assert!(
            p.pool.iter().all(|&b| b <= 256 * MIB),
            "{:?}:\n{plan}",
            p.part
        );
        assert!(
            p.summary.pool_bytes >= p.summary.activation_peak,
            "the pool cannot hold less than the peak:\n{plan}"
        );
    }
    Ok(plan)
}

#[test]
fn sd15_512_fits_webgpu_default_limits() -> TestResult {
    let plan = sd15_fits(512)?;
    // The UNet needs no chunking at 512x512 with CFG.
    let unet = part(&plan, Part::UNet)?;
    assert!(
        unet.tensors.iter().all(|t| t.chunks.len() == 1),
        "a UNet tensor is chunked at 512x512:\n{plan}"
    );
    // The VAE decoder does: 256 channels at 512x512 are 256 MiB.
    let decoder = part(&plan, Part::VaeDecoder)?;
    let upsampled = decoder
        .tensor("vae.decoder.up_blocks.2.upsamplers.0")
        .ok_or("no upsampler output")?;
    assert_eq!(
        upsampled.shape,
        Shape::Nchw {
            n: 1,
            c: 256,
            h: 512,
            w: 512
        }
    );
    assert_eq!(upsampled.chunks.len(), 2);
    assert!(upsampled.chunks.iter().all(|c| c.spec.bytes == 128 * MIB));
    Ok(())
}

/// Natively the context asks for the adapter's largest bindings (`ContextOptions::adapter_limits`):
/// with bindings of 2^31 - 1 bytes (what wgpu reports on Vulkan and DX12 desktop GPUs), SD 1.5
/// at 512x512 splits no tensor of any part, so the VAE decode runs in the cost model's unsplit
/// count of dispatches.
#[test]
fn sd15_512_splits_nothing_with_a_desktop_gpus_limits() -> TestResult {
    let configs = sd15()?;
    let limits = DeviceLimits {
        max_storage_binding: (1 << 31) - 1,
        max_buffer: (1 << 31) - 1,
    };
    let plan = plan(&configs.configs(), &PlanRequest::new(512, 512), &limits)?;
    for p in &plan.parts {
        let split: Vec<&str> = p
            .tensors
            .iter()
            .filter(|t| t.chunks.len() > 1)
            .map(|t| t.name.as_str())
            .collect();
        assert!(split.is_empty(), "{:?} splits {split:?}", p.part);
    }
    Ok(())
}

#[test]
fn sd15_768_fits_webgpu_default_limits() -> TestResult {
    let plan = sd15_fits(768)?;
    // At 768x768 the GEGLU projection of the first transformers would be 2 x 9216 x 2560
    // floats (189 MB, over one binding): the gate is applied as the projection writes, so only
    // the gated half (94 MB) is ever stored, in one buffer.
    let unet = part(&plan, Part::UNet)?;
    let block = "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff";
    assert!(unet.tensor(&format!("{block}.net.0.proj")).is_none());
    let gated = unet
        .tensor(&format!("{block}.net.0"))
        .ok_or("no GEGLU output")?;
    assert_eq!(gated.shape.bytes(), 2 * 9216 * 1280 * 4);
    assert_eq!(gated.chunks.len(), 1);
    Ok(())
}

#[test]
fn hand_computed_sizes_and_sd15_parameter_counts() -> TestResult {
    let configs = sd15()?;
    let plan = plan(
        &configs.configs(),
        &PlanRequest::new(512, 512),
        &DeviceLimits::WEBGPU_DEFAULT,
    )?;
    let unet = part(&plan, Part::UNet)?;
    let conv_in = unet.tensor("unet.conv_in").ok_or("no conv_in output")?;
    assert_eq!(conv_in.shape.bytes(), 2 * 320 * 64 * 64 * 4);
    let attn = unet
        .op("unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1")
        .ok_or("no attn1 op")?;
    let bound: Vec<u64> = unet.bindings(attn).map(|(_, _, bytes)| bytes).collect();
    assert_eq!(
        bound,
        vec![3 * 2 * 4096 * 320 * 4, 2 * 4096 * 320 * 4],
        "q, k and v side by side, and o, nothing more"
    );

    // Exact parameter counts of the published models: the walk builds every weight diffusers
    // and transformers have, with the right shapes.
    assert_eq!(unet_params(&plan)?, 859_520_964);
    let decoder = part(&plan, Part::VaeDecoder)?;
    let encoder = part(&plan, Part::VaeEncoder)?;
    assert_eq!(
        decoder.summary.weight_params + encoder.summary.weight_params,
        83_653_863
    );
    assert_eq!(
        part(&plan, Part::TextEncoder)?.summary.weight_params,
        123_060_480
    );
    // f16 matrices, f32 vectors: a little over 2 bytes per parameter.
    let params = 859_520_964u64 + 83_653_863 + 123_060_480;
    assert!(plan.weight_bytes > 2 * params && plan.weight_bytes < 2 * params + 4 * MIB);
    Ok(())
}

#[test]
fn a_tiny_limit_names_the_op_that_does_not_fit() -> TestResult {
    let configs = sd15()?;
    let limits = DeviceLimits {
        max_storage_binding: MIB,
        max_buffer: 2 * MIB,
    };
    match plan(&configs.configs(), &PlanRequest::new(512, 512), &limits) {
        Err(PlanError::Limit { name, needed, max }) => {
            assert_eq!(max, MIB);
            assert!(needed > MIB);
            assert!(name.starts_with("text_encoder.embeddings"), "{name}");
            assert!(name.contains("embeddings.token_embedding.weight"), "{name}");
        }
        other => panic!("expected a limit error, got {other:?}"),
    }

    // The decoder alone at 8 MiB per binding and buffer fits 64x64 latents (512x512 images):
    // the largest weight (a 512 x 512 x 3 x 3 kernel) is 4.5 MiB, one group of 8 channels at
    // 512x512 is exactly 8 MiB, and the mid-block attention's keys are exactly 8 MiB.
    let limits = DeviceLimits {
        max_storage_binding: 8 * MIB,
        max_buffer: 8 * MIB,
    };
    plan_vae_decoder(&configs.vae, 64, 64, &limits)?;
    // At 128x128 latents, the attention's 16384 tokens x 512 are 32 MiB, and the layout change
    // to tokens (like the keys after it) cannot be chunked: the first op that cannot split is
    // named.
    match plan_vae_decoder(&configs.vae, 128, 128, &limits) {
        Err(PlanError::Limit { name, needed, max }) => {
            assert!(
                name.starts_with("vae.decoder.mid_block.attentions.0.to_tokens: x"),
                "{name}"
            );
            assert_eq!((needed, max), (32 * MIB, 8 * MIB));
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    // Without that attention, the first tensor whose channel group does not fit is the
    // upsampled 512 channels at 512x512: groups of 16 channels, 16 MiB.
    let mut no_attention = configs.vae.clone();
    no_attention.mid_block_add_attention = false;
    match plan_vae_decoder(&no_attention, 128, 128, &limits) {
        Err(PlanError::Limit { name, needed, max }) => {
            assert!(
                name.starts_with("vae.decoder.up_blocks.1.upsamplers.0 "),
                "{name}"
            );
            assert_eq!((needed, max), (16 * MIB, 8 * MIB));
            let message = PlanError::Limit { name, needed, max }.to_string();
            assert!(
                message.contains("16.0 MiB") && message.contains("8.0 MiB"),
                "{message}"
            );
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    Ok(())
}

#[test]
fn bad_requests_are_errors() -> TestResult {
    let configs = sd15()?;
    let limits = DeviceLimits::WEBGPU_DEFAULT;
    for (w, h) in [(513, 512), (512, 0), (0, 0), (500, 512)] {
        let result = plan(&configs.configs(), &PlanRequest::new(w, h), &limits);
        assert!(
            matches!(result, Err(PlanError::Resolution { width, height, multiple: 8 }) if (width, height) == (w, h)),
            "{w}x{h}: {result:?}"
        );
    }
    let request = PlanRequest {
        images: 0,
        ..PlanRequest::new(512, 512)
    };
    assert!(matches!(
        plan(&configs.configs(), &request, &limits),
        Err(PlanError::Batch { images: 0 })
    ));
    let mut unsupported = configs.unet.clone();
    unsupported.class_embed_type = Some("timestep".into());
    let inputs = UNetSize {
        batch: 2,
        height: 64,
        width: 64,
        text_len: 77,
    };
    assert!(matches!(
        plan_unet(&unsupported, &inputs, &limits),
        Err(PlanError::Unsupported { part: "unet", .. })
    ));
    Ok(())
}

#[test]
fn odd_latent_sizes_upsample_to_the_skip_size() -> TestResult {
    // 520x520 images: latents 65 -> 33 -> 17 -> 9 down, and back up to the skips' sizes.
    let configs = sd15()?;
    let plan = plan(
        &configs.configs(),
        &PlanRequest::new(520, 520),
        &DeviceLimits::WEBGPU_DEFAULT,
    )?;
    let unet = part(&plan, Part::UNet)?;
    let up = unet
        .tensor("unet.up_blocks.0.upsamplers.0")
        .ok_or("no upsampler")?;
    assert_eq!(
        up.shape,
        Shape::Nchw {
            n: 2,
            c: 1280,
            h: 17,
            w: 17
        }
    );
    let out = unet.tensor("unet.conv_out").ok_or("no conv_out")?;
    assert_eq!(
        out.shape,
        Shape::Nchw {
            n: 2,
            c: 4,
            h: 65,
            w: 65
        }
    );
    Ok(())
}

#[test]
fn the_digits_plan_is_small() -> TestResult {
    let configs = load_configs(&fixtures().join("tiny-sd-digits"))?;
    let plan = plan(
        &configs.configs(),
        &PlanRequest::new(64, 64),
        &DeviceLimits::WEBGPU_DEFAULT,
    )?;
    println!("tiny-sd-digits at 64x64:\n{plan}");
    assert!(plan.peak_bytes < 64 * MIB, "{plan}");
    for p in &plan.parts {
        assert!(p.summary.activation_peak < 4 * MIB, "{plan}");
        assert!(p.tensors.iter().all(|t| t.chunks.len() == 1), "{plan}");
    }
    Ok(())
}

/// The tensor names and shapes in a safetensors file's header.
fn safetensors_shapes(
    path: &Path,
) -> Result<BTreeMap<String, Vec<usize>>, Box<dyn std::error::Error>> {
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let mut header = vec![0u8; usize::try_from(u64::from_le_bytes(len))?];
    file.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)?;
    let mut shapes = BTreeMap::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            continue;
        }
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("{name}: no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or("bad dimension")
            })
            .collect::<Result<Vec<_>, _>>()?;
        shapes.insert(
            name.strip_prefix("text_model.")
                .unwrap_or(&name)
                .to_string(),
            shape,
        );
    }
    shapes.remove("embeddings.position_ids");
    Ok(shapes)
}

/// The UNet's parameters: its call's and the text K/V projections' (once per generation).
fn unet_params(plan: &MemoryPlan) -> Result<u64, String> {
    Ok(part(plan, Part::UNetContext)?.summary.weight_params
        + part(plan, Part::UNet)?.summary.weight_params)
}

/// The weights the plan's `parts` expect, by name.
fn planned_shapes(parts: &[&PartPlan]) -> BTreeMap<String, Vec<usize>> {
    parts
        .iter()
        .flat_map(|p| p.weights.iter())
        .flat_map(|w| {
            // An assembled weight (Q, K and V as one matrix) is made of the file's tensors.
            w.assembly
                .sources(&w.name, &w.shape)
                .into_iter()
                .map(|(name, shape)| (name.to_owned(), shape.to_vec()))
        })
        .collect()
}

fn assert_same_weights(
    label: &str,
    planned: &BTreeMap<String, Vec<usize>>,
    file: &BTreeMap<String, Vec<usize>>,
) {
    let missing: Vec<_> = planned.keys().filter(|k| !file.contains_key(*k)).collect();
    let unused: Vec<_> = file.keys().filter(|k| !planned.contains_key(*k)).collect();
    let wrong: Vec<_> = planned
        .iter()
        .filter(|(k, s)| file.get(*k).is_some_and(|f| f != *s))
        .map(|(k, s)| format!("{k}: planned {s:?}, file {:?}", file.get(k)))
        .collect();
    assert!(
        missing.is_empty() && unused.is_empty() && wrong.is_empty(),
        "{label}: planned but not in the file: {missing:?}; in the file but not planned: {unused:?}; \
         wrong shapes: {wrong:?}"
    );
}

#[test]
fn planned_weights_match_every_fixture_checkpoint() -> TestResult {
    let mut folders = vec![fixtures().join("tiny-sd-digits")];
    for name in ["sd2-v", "turbo", "lcm", "inpaint9", "sdxl"] {
        folders.push(fixtures().join("tiny-arch").join(name));
    }
    for folder in folders {
        let label = folder.display().to_string();
        let configs = load_configs(&folder)?;
        let cfg = !matches!(label.rsplit('/').next(), Some("lcm" | "turbo"));
        let request = PlanRequest {
            classifier_free_guidance: cfg,
            ..PlanRequest::new(64, 64)
        };
        let plan = plan(&configs.configs(), &request, &DeviceLimits::WEBGPU_DEFAULT)
            .map_err(|e| format!("{label}: {e}"))?;
        let unet = [part(&plan, Part::UNetContext)?, part(&plan, Part::UNet)?];
        let file = safetensors_shapes(&folder.join("unet/diffusion_pytorch_model.safetensors"))?;
        assert_same_weights(&format!("{label} unet"), &planned_shapes(&unet), &file);
        let vae = [
            part(&plan, Part::VaeDecoder)?,
            part(&plan, Part::VaeEncoder)?,
        ];
        let file = safetensors_shapes(&folder.join("vae/diffusion_pytorch_model.safetensors"))?;
        assert_same_weights(&format!("{label} vae"), &planned_shapes(&vae), &file);
        let text = part(&plan, Part::TextEncoder)?;
        let file = safetensors_shapes(&folder.join("text_encoder/model.safetensors"))?;
        assert_same_weights(
            &format!("{label} text encoder"),
            &planned_shapes(&[text]),
            &file,
        );
        let second = folder.join("text_encoder_2/model.safetensors");
        assert_eq!(
            plan.parts.iter().any(|p| p.part == Part::TextEncoder2),
            second.is_file(),
            "{label}: a second text encoder is planned exactly when the folder has one"
        );
        if second.is_file() {
            let text_2 = part(&plan, Part::TextEncoder2)?;
            assert_same_weights(
                &format!("{label} text encoder 2"),
                &planned_shapes(&[text_2]),
                &safetensors_shapes(&second)?,
            );
        }
    }
    Ok(())
}

/// The published configs of SD 2.1, SD-Turbo, SDXL and SDXL-Turbo (`tests/configs/`, checked
/// against candle's in `tests/tests/arch_vs_candle.rs`).
fn published(name: &str) -> Result<NetworkConfigFiles, Box<dyn std::error::Error>> {
    load_configs(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/configs")
            .join(name),
    )
}

/// Every binding of every op within `max_storage_binding`, every buffer within `max_buffer`.
fn assert_within(label: &str, p: &PartPlan, limits: &DeviceLimits) {
    for op in &p.ops {
        for (role, name, bytes) in p.bindings(op) {
            assert!(
                bytes <= limits.max_storage_binding,
                "{label}: {}: {role} {name} is {bytes} bytes",
                op.name
            );
        }
    }
    assert!(
        p.pool.iter().all(|&b| b <= limits.max_buffer),
        "{label}: a {:?} pool buffer is over {} bytes",
        p.part,
        limits.max_buffer
    );
    assert!(p.summary.pool_bytes >= p.summary.activation_peak, "{label}");
}

/// Plans `name` at its native size (with CFG unless it is a turbo model) within WebGPU's
/// default limits.
fn published_fits(
    name: &str,
    size: u32,
    cfg: bool,
) -> Result<(NetworkConfigFiles, MemoryPlan), Box<dyn std::error::Error>> {
    let configs = published(name)?;
    let native = configs
        .unet
        .sample_size
        .as_ref()
        .map(|s| match s {
            sd_core::config::OneOrMany::One(n) => *n,
            sd_core::config::OneOrMany::Many(v) => v[0],
        })
        .ok_or("no sample_size")?
        * configs.vae.scale_factor();
    assert_eq!(native, size as usize, "{name}'s native size");
    let limits = DeviceLimits::WEBGPU_DEFAULT;
    let request = PlanRequest {
        classifier_free_guidance: cfg,
        ..PlanRequest::new(size, size)
    };
    let plan = plan(&configs.configs(), &request, &limits).map_err(|e| format!("{name}: {e}"))?;
    println!("{name} at {size}x{size}:\n{plan}");
    for p in &plan.parts {
        let s = &p.summary;
        println!(
            "  {}: {} parameters; peak at {}; largest binding {} ({} bytes); largest buffer {}",
            p.part.label(),
            s.weight_params,
            s.peak_op,
            s.largest_binding.name,
            s.largest_binding.bytes,
            s.largest_buffer.name
        );
        assert_within(name, p, &limits);
    }
    assert_eq!(
        part(&plan, Part::UNet)?
            .tensor("unet.sample")
            .map(|t| t.shape.batch()),
        Some(if cfg { 2 } else { 1 })
    );
    Ok((configs, plan))
}

#[test]
fn sd21_768_fits_webgpu_default_limits() -> TestResult {
    let (_, plan) = published_fits("sd21", 768, true)?;
    // The published model: 865.9 M UNet parameters, OpenCLIP-H's 23 layers (340.4 M), SD's
    // VAE (83.7 M).
    assert_eq!(unet_params(&plan)?, 865_910_724);
    assert_eq!(
        part(&plan, Part::TextEncoder)?.summary.weight_params,
        340_387_840
    );
    let vae = part(&plan, Part::VaeDecoder)?.summary.weight_params
        + part(&plan, Part::VaeEncoder)?.summary.weight_params;
    assert_eq!(vae, 83_653_863);
    Ok(())
}

#[test]
fn turbo_models_fit_webgpu_default_limits_at_512_without_cfg() -> TestResult {
    for name in ["sd-turbo", "sdxl-turbo"] {
        published_fits(name, 512, false)?;
    }
    Ok(())
}

#[test]
fn sdxl_1024_fits_webgpu_default_limits() -> TestResult {
    let (configs, plan) = published_fits("sdxl", 1024, true)?;
    // The published UNet: 2.567 B parameters, with the `text_time` addition embedding.
    let unet = part(&plan, Part::UNet)?;
    assert_eq!(unet_params(&plan)?, 2_567_463_684);
    assert!(
        unet.weights
            .iter()
            .any(|w| w.name.ends_with("add_embedding.linear_1.weight") && w.shape == [1280, 2816]),
        "the text_time embedding is planned"
    );
    // CLIP-L is SD 1.5's encoder.
    assert_eq!(
        part(&plan, Part::TextEncoder)?.summary.weight_params,
        123_060_480
    );
    // The second encoder (OpenCLIP-bigG, 32 layers, with its 1280 x 1280 `text_projection`),
    // planned on its own: 694.7 M parameters (693.0 M + 1.6 M).
    let text_2 = CLIPTextConfig::from_json(
        "sdxl/text_encoder_2/config.json",
        &read(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/configs/sdxl/text_encoder_2/config.json"),
        )?,
    )?;
    let limits = DeviceLimits::WEBGPU_DEFAULT;
    let big_g = sd_models::plan::plan_text_encoder(&text_2, Part::TextEncoder2, 2, &limits)?;
    println!(
        "sdxl text_encoder_2: {} parameters, largest binding {} ({} bytes)",
        big_g.summary.weight_params,
        big_g.summary.largest_binding.name,
        big_g.summary.largest_binding.bytes
    );
    assert_within("sdxl text_encoder_2", &big_g, &limits);
    assert_eq!(big_g.summary.weight_params, 694_659_840);
    // SDXL's VAE is SD's.
    assert_eq!(configs.vae.block_out_channels, vec![128, 256, 512, 512]);
    Ok(())
}
