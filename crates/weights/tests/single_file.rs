//! Single-file checkpoints: the fixtures written in the original Stability/A1111 layout and
//! read back give every tensor of the diffusers folder unchanged, the architecture is detected,
//! and the configs' shape-derived values match the fixtures' own configs.

use sd_test_support::fixtures;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sd_weights::single_file::{detect_architecture, open_single_file};
use sd_weights::{
    Architecture, SafetensorsFile, SingleFileModel, SingleFileOptions, WeightError,
    find_component_files, read_component_files, read_single_file, write_single_file,
};
use serde_json::Value;

/// A component's tensors by normalised name (`text_model.` dropped, `position_ids` left out):
/// (dtype, shape, bytes).
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn tensors(files: &[SafetensorsFile]) -> Tensors {
    files
        .iter()
        .flat_map(SafetensorsFile::tensors)
        .filter(|t| !t.name().ends_with("position_ids"))
        .map(|t| {
            let name = t.name().strip_prefix("text_model.").unwrap_or(t.name());
            (
                name.to_owned(),
                (
                    t.dtype().to_string(),
                    t.shape().to_vec(),
                    t.bytes().to_vec(),
                ),
            )
        })
        .collect()
}

fn folder_tensors(folder: &Path, component: &str) -> Tensors {
    let found = find_component_files(folder, component, None).expect("component files");
    tensors(&read_component_files(&found).expect("read component"))
}

fn model_tensors(model: &SingleFileModel, component: &str) -> Tensors {
    let (path, bytes) = model
        .files
        .iter()
        .find(|(p, _)| p.starts_with(&format!("{component}/")) && p.ends_with(".safetensors"))
        .unwrap_or_else(|| panic!("no {component} weights in {:?}", model.files.keys()));
    tensors(&[SafetensorsFile::from_arc(path.clone(), Arc::clone(bytes)).expect("parse")])
}

fn config(model: &SingleFileModel, path: &str) -> Value {
    serde_json::from_slice(model.files.get(path).unwrap_or_else(|| panic!("no {path}")))
        .expect("JSON")
}

fn fixture_config(folder: &Path, path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(folder.join(path)).expect("read config"))
        .expect("JSON")
}

/// Writes `folder` as a single file, checks the detected architecture, reads it back with
/// `options`, and checks every component's tensors are the folder's, bit for bit.
fn round_trip(folder: &Path, arch: Architecture, options: &SingleFileOptions) -> SingleFileModel {
    let bytes = write_single_file(folder, arch).expect("write the single file");
    let file = SafetensorsFile::from_vec("single.safetensors", bytes).expect("parse");
    assert_eq!(detect_architecture(&file).expect("detect"), arch);
    let model = read_single_file(&file, options).expect("read the single file");
    assert_eq!(model.architecture, arch);
    assert!(
        model.ignored.is_empty(),
        "unplaced tensors: {:?}",
        model.ignored
    );
    let mut components = vec!["unet", "vae", "text_encoder"];
    if arch == Architecture::Sdxl {
        components.push("text_encoder_2");
    }
    for component in components {
        let want = folder_tensors(folder, component);
        let got = model_tensors(&model, component);
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "{component}: names"
        );
        for (name, t) in &want {
            assert!(got.get(name) == Some(t), "{component}: `{name}` differs");
        }
    }
    model
}

/// The values of `keys` in both configs.
fn assert_same(model: &SingleFileModel, folder: &Path, path: &str, keys: &[&str]) {
    let got = config(model, path);
    let want = fixture_config(folder, path);
    for key in keys {
        assert_eq!(got.get(key), want.get(key), "{path}: `{key}`");
    }
}

const UNET_SHAPE_KEYS: [&str; 9] = [
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "use_linear_projection",
    "transformer_layers_per_block",
];
const VAE_SHAPE_KEYS: [&str; 7] = [
    "in_channels",
    "out_channels",
    "latent_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
];
const TEXT_SHAPE_KEYS: [&str; 5] = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "max_position_embeddings",
    "vocab_size",
];

#[test]
fn sdxl_round_trip_and_configs() {
    let folder = fixtures().join("tiny-arch/sdxl");
    let model = round_trip(&folder, Architecture::Sdxl, &SingleFileOptions::new());
    let mut unet_keys = UNET_SHAPE_KEYS.to_vec();
    unet_keys.extend([
        "addition_embed_type",
        "projection_class_embeddings_input_dim",
        "addition_time_embed_dim",
    ]);
    assert_same(&model, &folder, "unet/config.json", &unet_keys);
    assert_same(&model, &folder, "vae/config.json", &VAE_SHAPE_KEYS);
    assert_same(
        &model,
        &folder,
        "text_encoder/config.json",
        &TEXT_SHAPE_KEYS,
    );
    let mut text2 = TEXT_SHAPE_KEYS.to_vec();
    text2.push("projection_dim");
    assert_same(&model, &folder, "text_encoder_2/config.json", &text2);
    // Published SDXL values the shapes cannot give.
    assert_eq!(config(&model, "vae/config.json")["scaling_factor"], 0.13025);
    assert_eq!(
        config(&model, "text_encoder_2/config.json")["hidden_act"],
        "gelu"
    );
    assert_eq!(
        config(&model, "text_encoder/config.json")["hidden_act"],
        "quick_gelu"
    );
    assert_eq!(
        config(&model, "tokenizer_2/tokenizer_config.json")["pad_token"],
        "!"
    );
    assert_eq!(
        config(&model, "tokenizer/tokenizer_config.json")["pad_token"],
        "<|endoftext|>"
    );
    for file in [
        "tokenizer/tokenizer.json",
        "tokenizer_2/tokenizer.json",
        "model_index.json",
    ] {
        assert!(model.files.contains_key(file), "{file}");
    }
    assert!(
        config(&model, "model_index.json")
            .get("text_encoder_2")
            .is_some()
    );
    assert_eq!(
        config(&model, "scheduler/scheduler_config.json")["prediction_type"],
        "epsilon"
    );
}

#[test]
fn sd2_round_trip_is_v_prediction() {
    let folder = fixtures().join("tiny-arch/sd2-v");
    let model = round_trip(&folder, Architecture::Sd2, &SingleFileOptions::new());
    assert_same(&model, &folder, "unet/config.json", &UNET_SHAPE_KEYS);
    assert_same(&model, &folder, "vae/config.json", &VAE_SHAPE_KEYS);
    assert_same(
        &model,
        &folder,
        "text_encoder/config.json",
        &TEXT_SHAPE_KEYS,
    );
    assert_eq!(
        config(&model, "scheduler/scheduler_config.json")["prediction_type"],
        "v_prediction"
    );
    assert_eq!(
        config(&model, "tokenizer/tokenizer_config.json")["pad_token"],
        "!"
    );
    // Told otherwise.
    let bytes = write_single_file(&folder, Architecture::Sd2).expect("write");
    let file = SafetensorsFile::from_vec("sd2.safetensors", bytes).expect("parse");
    let eps = read_single_file(&file, &SingleFileOptions::new().prediction_type("epsilon"))
        .expect("read");
    assert_eq!(
        config(&eps, "scheduler/scheduler_config.json")["prediction_type"],
        "epsilon"
    );
}

/// SD 2.x's pipeline uses OpenCLIP's penultimate layer: residual blocks beyond the configured
/// layer count are left out (and listed), as the published 24-block file gives 23 layers.
#[test]
fn open_clip_blocks_beyond_the_config_are_unused() {
    let folder = fixtures().join("tiny-arch/sd2-v");
    let bytes = write_single_file(&folder, Architecture::Sd2).expect("write");
    let file = SafetensorsFile::from_vec("sd2.safetensors", bytes).expect("parse");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("text_encoder")).expect("mkdir");
    let mut text = fixture_config(&folder, "text_encoder/config.json");
    text["num_hidden_layers"] = 2.into();
    std::fs::write(
        dir.path().join("text_encoder/config.json"),
        text.to_string(),
    )
    .expect("write config");
    let model =
        read_single_file(&file, &SingleFileOptions::new().config_dir(dir.path())).expect("read");
    let got = model_tensors(&model, "text_encoder");
    assert!(got.keys().all(|n| !n.starts_with("encoder.layers.2.")));
    assert!(got.contains_key("encoder.layers.1.self_attn.v_proj.bias"));
    assert_eq!(model.ignored.len(), 12, "{:?}", model.ignored);
    assert!(
        model
            .ignored
            .iter()
            .all(|n| n.starts_with("cond_stage_model.model.transformer.resblocks.2."))
    );
    // The override is used as given; the other configs stay the built-in ones.
    assert_eq!(
        config(&model, "text_encoder/config.json")["num_hidden_layers"],
        2
    );
    assert_eq!(config(&model, "unet/config.json")["sample_size"], 96);
}

#[test]
fn digits_and_inpaint_round_trip() {
    let folder = fixtures().join("tiny-sd-digits");
    let model = round_trip(&folder, Architecture::Sd1, &SingleFileOptions::new());
    assert_same(&model, &folder, "unet/config.json", &UNET_SHAPE_KEYS);
    assert_same(&model, &folder, "vae/config.json", &VAE_SHAPE_KEYS);
    assert_same(
        &model,
        &folder,
        "text_encoder/config.json",
        &TEXT_SHAPE_KEYS,
    );
    let inpaint = fixtures().join("tiny-arch/inpaint9");
    let model = round_trip(&inpaint, Architecture::Sd1, &SingleFileOptions::new());
    assert_eq!(config(&model, "unet/config.json")["in_channels"], 9);
}

/// The original layout's names, spot-checked on the written file.
#[test]
fn written_names_are_the_original_layout() {
    let bytes =
        write_single_file(&fixtures().join("tiny-arch/sdxl"), Architecture::Sdxl).expect("write");
    let file = SafetensorsFile::from_vec("sdxl.safetensors", bytes).expect("parse");
    for (name, shape) in [
        (
            "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
            &[192, 64][..],
        ),
        ("conditioner.embedders.1.model.text_projection", &[64, 64]),
        (
            "conditioner.embedders.1.model.positional_embedding",
            &[77, 64],
        ),
        (
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            &[32],
        ),
        (
            "first_stage_model.decoder.mid.attn_1.q.weight",
            &[64, 64, 1, 1],
        ),
        (
            "first_stage_model.encoder.down.3.block.0.conv1.weight",
            &[64, 64, 3, 3],
        ),
        ("model.diffusion_model.label_emb.0.0.weight", &[128, 112]),
        (
            "model.diffusion_model.output_blocks.1.2.conv.weight",
            &[64, 64, 3, 3],
        ),
        (
            "model.diffusion_model.input_blocks.2.0.op.weight",
            &[32, 32, 3, 3],
        ),
    ] {
        let t = file.tensor(name).unwrap_or_else(|| {
            panic!(
                "{name} missing; have {:?}",
                file.names().take(5).collect::<Vec<_>>()
            )
        });
        assert_eq!(t.shape(), shape, "{name}");
    }
}

/// Every tensor of `file`, as views to serialise again (with more or fewer tensors).
fn views(file: &SafetensorsFile) -> Vec<(String, safetensors::tensor::TensorView<'_>)> {
    file.tensors()
        .map(|t| {
            (
                t.name().to_owned(),
                safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), t.bytes())
                    .expect("view"),
            )
        })
        .collect()
}

#[test]
fn v_pred_key_means_v_prediction() {
    let bytes =
        write_single_file(&fixtures().join("tiny-arch/sdxl"), Architecture::Sdxl).expect("write");
    let file = SafetensorsFile::from_vec("sdxl.safetensors", bytes).expect("parse");
    let mut tensors = views(&file);
    let marker = [0u8; 0];
    tensors.push((
        "v_pred".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![0], &marker)
            .expect("view"),
    ));
    let bytes = safetensors::serialize(tensors, None).expect("serialize");
    let file = SafetensorsFile::from_vec("vpred.safetensors", bytes).expect("parse");
    let model = read_single_file(&file, &SingleFileOptions::new()).expect("read");
    assert_eq!(
        config(&model, "scheduler/scheduler_config.json")["prediction_type"],
        "v_prediction"
    );
}

#[test]
fn a_missing_part_is_named() {
    let bytes =
        write_single_file(&fixtures().join("tiny-sd-digits"), Architecture::Sd1).expect("write");
    let file = SafetensorsFile::from_vec("digits.safetensors", bytes).expect("parse");
    let without = |prefix: &str| {
        let kept: Vec<_> = file
            .tensors()
            .filter(|t| !t.name().starts_with(prefix))
            .map(|t| {
                (
                    t.name().to_owned(),
                    safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), t.bytes())
                        .expect("view"),
                )
            })
            .collect();
        let bytes = safetensors::serialize(kept, None).expect("serialize");
        let file = SafetensorsFile::from_vec("part.safetensors", bytes).expect("parse");
        read_single_file(&file, &SingleFileOptions::new()).expect_err("a part is missing")
    };
    let err = without("first_stage_model.");
    assert!(matches!(err, WeightError::SingleFile { .. }), "{err}");
    assert!(err.to_string().contains("no VAE"), "{err}");
    let err = without("model.diffusion_model.");
    assert!(err.to_string().contains("UNet"), "{err}");
}

#[test]
fn pickles_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not a pickle at all: the refusal must come from the name, before any read.
    let path = dir.path().join("model.ckpt");
    std::fs::write(&path, b"not read").expect("write");
    let err = open_single_file(&path, &SingleFileOptions::new()).expect_err("refused");
    assert!(matches!(err, WeightError::Pickle { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("model.ckpt") && message.contains("arbitrary code"),
        "{message}"
    );
    let missing = dir.path().join("absent.pt");
    assert!(matches!(
        open_single_file(&missing, &SingleFileOptions::new()),
        Err(WeightError::Pickle { .. })
    ));
}

/// Issue 18's bombs: a single file whose keys name absurd block indices (the loader once looped
/// and allocated up to them, or overflowed) is refused at once, naming the file and the key.
#[test]
fn absurd_block_indices_are_refused_at_once() {
    let bytes =
        write_single_file(&fixtures().join("tiny-sd-digits"), Architecture::Sd1).expect("write");
    let file = SafetensorsFile::from_vec("digits.safetensors", bytes).expect("parse");
    let marker = [0u8; 0];
    for key in [
        "first_stage_model.encoder.down.1000000000.block.0.norm1.weight",
        "model.diffusion_model.output_blocks.18446744073709551615.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.99999999999999999999999.0.weight",
    ] {
        let mut tensors = views(&file);
        tensors.push((
            key.into(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![0], &marker)
                .expect("view"),
        ));
        let bytes = safetensors::serialize(tensors, None).expect("serialize");
        let bomb = SafetensorsFile::from_vec("bomb.safetensors", bytes).expect("parse");
        let start = std::time::Instant::now();
        let err = read_single_file(&bomb, &SingleFileOptions::new()).expect_err("refused");
        assert!(
            start.elapsed().as_secs_f64() < 1.0,
            "{key}: took {:?}",
            start.elapsed()
        );
        let message = err.to_string();
        assert!(
            matches!(err, WeightError::SingleFile { .. })
                && message.contains("bomb.safetensors")
                && message.contains(key),
            "{key}: {message}"
        );
    }
}
