//! Parses every config of the shared fixtures (`shared/fixtures/`: the trained digits model,
//! SD 1.5's configs and the tiny random-weight architectures) and checks the values that the
//! models depend on, plus the errors for missing and wrongly typed keys.

use sd_test_support::fixtures;
use std::fs;
use std::path::{Path, PathBuf};

use sd_core::config::{
    AutoencoderKLConfig, BetaSchedule, CLIPTextConfig, ConfigError, HiddenAct, ModelIndex,
    OneOrMany, PredictionType, SchedulerConfig, TimestepSpacing, UNet2DConditionConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn read(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// A pipeline folder of the fixtures, by its path under `shared/fixtures/`.
struct Folder(PathBuf);

impl Folder {
    fn new(relative: &str) -> Self {
        Self(fixtures().join(relative))
    }

    fn unet(&self) -> Result<UNet2DConditionConfig, Box<dyn std::error::Error>> {
        let json = read(&self.0.join("unet/config.json"))?;
        Ok(UNet2DConditionConfig::from_json("unet/config.json", &json)?)
    }

    fn vae(&self) -> Result<AutoencoderKLConfig, Box<dyn std::error::Error>> {
        let json = read(&self.0.join("vae/config.json"))?;
        Ok(AutoencoderKLConfig::from_json("vae/config.json", &json)?)
    }

    fn text_encoder(&self, folder: &str) -> Result<CLIPTextConfig, Box<dyn std::error::Error>> {
        let file = format!("{folder}/config.json");
        let json = read(&self.0.join(&file))?;
        Ok(CLIPTextConfig::from_json(&file, &json)?)
    }

    fn scheduler(&self) -> Result<SchedulerConfig, Box<dyn std::error::Error>> {
        let json = read(&self.0.join("scheduler/scheduler_config.json"))?;
        Ok(SchedulerConfig::from_json(
            "scheduler/scheduler_config.json",
            &json,
        )?)
    }

    fn model_index(&self) -> Result<ModelIndex, Box<dyn std::error::Error>> {
        let json = read(&self.0.join("model_index.json"))?;
        Ok(ModelIndex::from_json("model_index.json", &json)?)
    }
}

/// The folders that hold a complete pipeline (with `model_index.json`).
fn pipeline_folders() -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut folders = vec![fixtures().join("tiny-sd-digits")];
    let arch = fixtures().join("tiny-arch");
    for entry in fs::read_dir(&arch).map_err(|e| format!("{}: {e}", arch.display()))? {
        let path = entry?.path();
        if path.join("model_index.json").is_file() {
            folders.push(path);
        }
    }
    folders.sort();
    Ok(folders)
}

#[test]
fn every_fixture_config_parses() -> TestResult {
    let folders = pipeline_folders()?;
    assert_eq!(
        folders.len(),
        6,
        "digits + 5 tiny architectures: {folders:?}"
    );
    for path in folders {
        let folder = Folder(path.clone());
        let index = folder.model_index()?;
        for (name, component) in &index.components {
            let Some(component) = component else { continue };
            match component.class.as_str() {
                "UNet2DConditionModel" => drop(folder.unet()?),
                "AutoencoderKL" => drop(folder.vae()?),
                "CLIPTextModel" | "CLIPTextModelWithProjection" => {
                    drop(folder.text_encoder(name)?);
                }
                class if class.ends_with("Scheduler") => drop(folder.scheduler()?),
                "CLIPTokenizer" => {}
                other => panic!("{}: unexpected component {name}: {other}", path.display()),
            }
        }
    }
    let sd15 = Folder::new("configs/sd15");
    sd15.unet()?;
    sd15.vae()?;
    sd15.text_encoder("text_encoder")?;
    sd15.scheduler()?;
    Ok(())
}

#[test]
fn sd15_values() -> TestResult {
    let sd15 = Folder::new("configs/sd15");
    let unet = sd15.unet()?;
    assert_eq!(unet.block_out_channels, [320, 640, 1280, 1280]);
    assert_eq!(unet.heads_per_block(), [8, 8, 8, 8]);
    assert_eq!(unet.transformer_depth_per_block(), [1, 1, 1, 1]);
    assert_eq!(unet.up_transformer_depths(), vec![vec![1; 3]; 4]);
    assert_eq!(unet.layers_per_block(), [2, 2, 2, 2]);
    assert_eq!(unet.cross_attention_dim_per_block(), [768; 4]);
    assert_eq!(unet.time_embed_dim(), 1280);
    assert_eq!(
        unet.mid_block_type.as_deref(),
        Some("UNetMidBlock2DCrossAttn")
    );
    assert_eq!(unet.norm_num_groups, Some(32));
    assert!(!unet.use_linear_projection && !unet.upcast_attention);
    assert_eq!(unet.time_cond_proj_dim, None);
    assert_eq!(unet.addition_embed_type, None);
    assert_eq!(unet.class_embed_type, None);
    assert_eq!(unet.sample_size, Some(OneOrMany::One(64)));

    let vae = sd15.vae()?;
    assert_eq!(vae.block_out_channels, [128, 256, 512, 512]);
    assert_eq!(vae.layers_per_block, 2);
    assert_eq!(vae.scale_factor(), 8);
    // Not in SD 1.5's original config: diffusers' defaults.
    assert!((vae.scaling_factor - 0.18215).abs() < 1e-12);
    assert!(vae.force_upcast && vae.mid_block_add_attention);
    assert!(vae.use_quant_conv && vae.use_post_quant_conv);

    let clip = sd15.text_encoder("text_encoder")?;
    assert_eq!(
        (
            clip.hidden_size,
            clip.num_hidden_layers,
            clip.num_attention_heads
        ),
        (768, 12, 12)
    );
    assert_eq!(clip.head_dim(), 64);
    assert_eq!(clip.hidden_act, HiddenAct::QuickGelu);
    assert_eq!(clip.projection_dim, Some(768));
    assert_eq!((clip.bos_token_id, clip.eos_token_id), (0, 2));

    let scheduler = sd15.scheduler()?;
    assert_eq!(scheduler.class_name, "PNDMScheduler");
    assert_eq!(scheduler.beta_schedule, BetaSchedule::ScaledLinear);
    assert_eq!(scheduler.prediction_type, PredictionType::Epsilon);
    assert_eq!(scheduler.timestep_spacing, Some(TimestepSpacing::Leading));
    assert_eq!(scheduler.steps_offset, 1);
    assert_eq!(scheduler.set_alpha_to_one, Some(false));
    assert_eq!(scheduler.use_karras_sigmas, None);
    Ok(())
}

#[test]
fn digits_values() -> TestResult {
    let digits = Folder::new("tiny-sd-digits");
    let unet = digits.unet()?;
    assert_eq!(unet.block_out_channels, [32, 64, 64]);
    assert_eq!(unet.heads_per_block(), [8, 8, 8]);
    assert_eq!(unet.num_attention_heads, None);
    assert_eq!(unet.cross_attention_dim_per_block(), [64; 3]);
    let clip = digits.text_encoder("text_encoder")?;
    assert_eq!((clip.hidden_size, clip.intermediate_size), (64, 256));
    assert_eq!(
        (clip.bos_token_id, clip.eos_token_id, clip.pad_token_id),
        (49406, 49407, 49407)
    );
    let vae = digits.vae()?;
    assert_eq!(vae.block_out_channels, [32, 64, 64, 64]);
    assert_eq!(vae.layers_per_block, 1);
    let index = digits.model_index()?;
    assert_eq!(index.class_name, "StableDiffusionPipeline");
    assert_eq!(index.diffusers_version.as_deref(), Some("0.42.1"));
    assert_eq!(index.requires_safety_checker, Some(false));
    let unet_spec = index.component("unet").ok_or("no unet component")?;
    assert_eq!(
        (unet_spec.library.as_str(), unet_spec.class.as_str()),
        ("diffusers", "UNet2DConditionModel")
    );
    assert!(index.components.contains_key("safety_checker"));
    assert_eq!(index.component("safety_checker"), None);
    Ok(())
}

#[test]
fn tiny_architecture_values() -> TestResult {
    let sd2 = Folder::new("tiny-arch/sd2-v");
    let unet = sd2.unet()?;
    assert_eq!(unet.heads_per_block(), [2, 4]);
    assert!(unet.use_linear_projection && unet.upcast_attention);
    assert_eq!(
        sd2.text_encoder("text_encoder")?.hidden_act,
        HiddenAct::Gelu
    );
    assert_eq!(
        sd2.scheduler()?.prediction_type,
        PredictionType::VPrediction
    );

    let sdxl = Folder::new("tiny-arch/sdxl");
    let unet = sdxl.unet()?;
    assert_eq!(unet.transformer_depth_per_block(), [1, 2]);
    assert_eq!(unet.up_transformer_depths(), [vec![2, 2], vec![1, 1]]);
    assert_eq!(unet.addition_embed_type.as_deref(), Some("text_time"));
    assert_eq!(unet.addition_time_embed_dim, Some(8));
    assert_eq!(unet.projection_class_embeddings_input_dim, Some(112));
    assert_eq!(unet.cross_attention_dim, OneOrMany::One(96));
    let vae = sdxl.vae()?;
    assert!((vae.scaling_factor - 0.13025).abs() < 1e-12);
    let second = sdxl.text_encoder("text_encoder_2")?;
    assert_eq!(
        second.architectures.as_deref(),
        Some(&["CLIPTextModelWithProjection".to_string()][..])
    );
    let index = sdxl.model_index()?;
    assert_eq!(index.force_zeros_for_empty_prompt, Some(true));
    assert!(index.component("text_encoder_2").is_some());
    assert_eq!(sdxl.scheduler()?.use_karras_sigmas, Some(false));

    assert_eq!(
        Folder::new("tiny-arch/lcm").unet()?.time_cond_proj_dim,
        Some(32)
    );
    let lcm = Folder::new("tiny-arch/lcm").scheduler()?;
    assert_eq!(lcm.original_inference_steps, Some(50));
    assert_eq!(lcm.set_alpha_to_one, Some(true));
    assert_eq!(Folder::new("tiny-arch/inpaint9").unet()?.in_channels, 9);
    let turbo = Folder::new("tiny-arch/turbo").scheduler()?;
    assert_eq!(turbo.timestep_spacing, Some(TimestepSpacing::Trailing));
    Ok(())
}

/// SD 1.5's UNet config with `key` removed or its value replaced.
fn sd15_unet_with(
    key: &str,
    value: Option<serde_json::Value>,
) -> Result<String, Box<dyn std::error::Error>> {
    let json = read(&fixtures().join("configs/sd15/unet/config.json"))?;
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json)?;
    match value {
        Some(value) => object.insert(key.to_string(), value),
        None => object.remove(key),
    };
    Ok(serde_json::to_string(&object)?)
}

/// Asserts that `error` is a parse error naming `file` and `key`, and that its message does.
fn assert_names(error: &ConfigError, file: &str, key: &str) {
    let ConfigError::Parse {
        file: f, key: k, ..
    } = error
    else {
        panic!("expected a parse error, got {error:?}");
    };
    assert_eq!((f.as_str(), k.as_deref()), (file, Some(key)), "{error}");
    let text = error.to_string();
    assert!(text.contains(file) && text.contains(key), "{text}");
}

#[test]
fn missing_key_names_file_and_key() -> TestResult {
    let json = sd15_unet_with("block_out_channels", None)?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("a config without block_out_channels parsed")?;
    assert_names(&error, "unet/config.json", "block_out_channels");
    assert_eq!(
        error.to_string(),
        "unet/config.json: key `block_out_channels`: required key is missing"
    );

    let error = AutoencoderKLConfig::from_json("vae/config.json", r#"{"in_channels": 3}"#)
        .err()
        .ok_or("an incomplete VAE config parsed")?;
    let ConfigError::Parse {
        file, key: Some(_), ..
    } = &error
    else {
        panic!("expected a parse error naming a key, got {error:?}");
    };
    assert_eq!(file, "vae/config.json");

    let error = ModelIndex::from_json("model_index.json", r#"{"unet": ["diffusers", "X"]}"#)
        .err()
        .ok_or("a model index without _class_name parsed")?;
    assert_names(&error, "model_index.json", "_class_name");
    Ok(())
}

#[test]
fn ill_typed_key_names_file_and_key() -> TestResult {
    let json = sd15_unet_with("layers_per_block", Some("two".into()))?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("a string layers_per_block parsed")?;
    assert_names(&error, "unet/config.json", "layers_per_block");

    let json = sd15_unet_with("block_out_channels", Some(serde_json::json!([320, "640"])))?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("a string channel count parsed")?;
    assert_names(&error, "unet/config.json", "block_out_channels");
    assert!(error.to_string().contains("invalid type"), "{error}");

    // A defaulted key with the wrong type is an error too, not silently the default.
    let json = sd15_unet_with("use_linear_projection", Some(1.into()))?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("a numeric use_linear_projection parsed")?;
    assert_names(&error, "unet/config.json", "use_linear_projection");

    let clip = read(&fixtures().join("configs/sd15/text_encoder/config.json"))?
        .replace("\"quick_gelu\"", "\"relu\"");
    let error = CLIPTextConfig::from_json("text_encoder/config.json", &clip)
        .err()
        .ok_or("hidden_act relu parsed")?;
    assert_names(&error, "text_encoder/config.json", "hidden_act");

    let scheduler = read(&fixtures().join("configs/sd15/scheduler/scheduler_config.json"))?
        .replace("\"scaled_linear\"", "\"cubic\"");
    let error = SchedulerConfig::from_json("scheduler/scheduler_config.json", &scheduler)
        .err()
        .ok_or("beta_schedule cubic parsed")?;
    assert_names(&error, "scheduler/scheduler_config.json", "beta_schedule");

    let error = ModelIndex::from_json(
        "model_index.json",
        r#"{"_class_name": "StableDiffusionPipeline", "vae": ["diffusers"]}"#,
    )
    .err()
    .ok_or("a one-element component parsed")?;
    assert_names(&error, "model_index.json", "vae");
    Ok(())
}

#[test]
fn malformed_json_and_inconsistent_keys() -> TestResult {
    let error = UNet2DConditionConfig::from_json("unet/config.json", "{\"in_channels\": 4,")
        .err()
        .ok_or("truncated JSON parsed")?;
    assert!(
        matches!(&error, ConfigError::Parse { key: None, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with("unet/config.json: "),
        "{error}"
    );

    let error = UNet2DConditionConfig::from_json("unet/config.json", "[1, 2]")
        .err()
        .ok_or("an array parsed as a config")?;
    assert!(
        error.to_string().contains("expected a JSON object"),
        "{error}"
    );

    let json = sd15_unet_with("attention_head_dim", Some(serde_json::json!([8, 8, 8])))?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("three head counts for four blocks parsed")?;
    assert!(
        matches!(&error, ConfigError::Invalid { key, .. } if key == "attention_head_dim"),
        "{error:?}"
    );

    let json = sd15_unet_with("up_block_types", Some(serde_json::json!(["UpBlock2D"])))?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("one up block for four levels parsed")?;
    assert!(
        matches!(&error, ConfigError::Invalid { key, .. } if key == "up_block_types"),
        "{error:?}"
    );
    Ok(())
}

#[test]
fn num_attention_heads_overrides_attention_head_dim() -> TestResult {
    let json = sd15_unet_with(
        "num_attention_heads",
        Some(serde_json::json!([5, 10, 20, 20])),
    )?;
    let unet = UNet2DConditionConfig::from_json("unet/config.json", &json)?;
    assert_eq!(unet.heads_per_block(), [5, 10, 20, 20]);
    let json = sd15_unet_with("num_attention_heads", Some(serde_json::Value::Null))?;
    let unet = UNet2DConditionConfig::from_json("unet/config.json", &json)?;
    assert_eq!(unet.heads_per_block(), [8, 8, 8, 8]);
    // `null` for a key whose default is a value means "none" where diffusers allows it.
    let json = sd15_unet_with("mid_block_type", Some(serde_json::Value::Null))?;
    assert_eq!(
        UNet2DConditionConfig::from_json("unet/config.json", &json)?.mid_block_type,
        None
    );
    Ok(())
}

#[test]
fn error_messages_read_well() -> TestResult {
    let json = sd15_unet_with("layers_per_block", Some("two".into()))?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("a string layers_per_block parsed")?;
    assert_eq!(
        error.to_string(),
        "unet/config.json: key `layers_per_block`: invalid type: string \"two\", expected usize \
         (a single value, or a list with one value per block)"
    );
    let json = sd15_unet_with("block_out_channels", Some(serde_json::json!([320, "640"])))?;
    let error = UNet2DConditionConfig::from_json("unet/config.json", &json)
        .err()
        .ok_or("a string channel count parsed")?;
    assert_eq!(
        error.to_string(),
        "unet/config.json: key `block_out_channels`: invalid type: string \"640\", expected usize"
    );
    Ok(())
}
