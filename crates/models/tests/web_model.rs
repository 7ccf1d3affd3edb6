//! The web model format end to end on the native side: the converter is deterministic and
//! shards stay under the target size, a web model folder generates the same picture as the
//! diffusers folder it came from, and damaged or missing shards are refused by name.

#[allow(dead_code)] // this file needs only the fixture path and the GPU context
mod common;

use std::path::Path;
use std::sync::Arc;

use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_kernels::DType;
use sd_models::{Inputs, ModelSource, StableDiffusion};
use sd_weights::WeightError;
use sd_weights::web::{
    MANIFEST_FILE, SHARD_TARGET_BYTES, WebManifest, convert_to_web, read_web_model,
};

use common::fixtures;

/// The f16 digits model the CLI embeds.
fn embedded_model() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../sd/model"))
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn conversion_is_deterministic_and_sharded_by_hash() {
    let (a, b) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let src = fixtures().join("tiny-sd-digits");
    let report = convert_to_web(&src, a.path(), Some("digits")).expect("convert");
    convert_to_web(&src, b.path(), Some("digits")).expect("convert again");
    let (fa, fb) = (files_of(a.path()), files_of(b.path()));
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(
        fa == fb,
        "two conversions of the same folder differ in bytes"
    );

    let manifest = &report.manifest;
    assert_eq!(manifest.name, "digits");
    assert_eq!(
        fa.len(),
        manifest.shards.len() + 1,
        "shards + manifest.json"
    );
    for shard in &manifest.shards {
        assert!(
            shard.size as usize <= SHARD_TARGET_BYTES + (1 << 20),
            "{shard:?}"
        );
    }
    for needed in [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json",
    ] {
        assert!(manifest.files.contains_key(needed), "{needed} in files");
    }
    // Every float tensor is f16, and each lies where the manifest says.
    let shard_bytes: Vec<Vec<u8>> = manifest
        .shards
        .iter()
        .map(|s| std::fs::read(a.path().join(&s.file)).expect("shard"))
        .collect();
    for t in &manifest.tensors {
        assert!(t.dtype == "F16" || t.dtype == "I64", "{t:?}");
        let file = sd_weights::SafetensorsFile::from_vec("shard", shard_bytes[t.shard].clone())
            .expect("a shard is a safetensors file");
        let range = file.byte_range(&t.name).expect("tensor in its shard");
        assert_eq!(
            (range.start as u64, range.len() as u64),
            (t.offset, t.length),
            "{}",
            t.name
        );
    }
    // The manifest read back equals the one written.
    let json = std::fs::read(a.path().join(MANIFEST_FILE)).expect("manifest");
    assert_eq!(
        &WebManifest::from_json("m", &json).expect("parse"),
        manifest
    );
}

#[test]
fn a_web_model_generates_what_its_source_folder_generates() {
    let dir = tempfile::tempdir().expect("tmp");
    convert_to_web(embedded_model(), dir.path(), None).expect("convert");
    let ctx = common::context();
    let params = GenerationParams {
        prompt: "a red digit seven on a blue background".into(),
        steps: 4,
        guidance_scale: 5.0,
        seed: 7,
        sampler: SamplerKind::EULER,
        width: 64,
        height: 64,
        ..GenerationParams::default()
    };
    let mut images = Vec::new();
    for source in [
        ModelSource::folder(embedded_model()),
        ModelSource::open(dir.path()).expect("open the web model"),
    ] {
        let sd = StableDiffusion::load(Arc::clone(&ctx), &source, DType::F16).expect("load");
        let out = pollster::block_on(sd.generate(&params, &Inputs::default(), &mut |_| {}, None))
            .expect("generate");
        images.push(out.images);
    }
    // The converter keeps f16 values as they are, so the pictures are identical.
    assert!(
        images[0] == images[1],
        "web model and source folder disagree"
    );
}

#[test]
fn damaged_and_missing_shards_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let report = convert_to_web(embedded_model(), dir.path(), None).expect("convert");
    let shard = &report.manifest.shards[0];
    let path = dir.path().join(&shard.file);
    let mut bytes = std::fs::read(&path).expect("shard");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).expect("damage");
    match read_web_model(dir.path()) {
        Err(WeightError::Integrity { file, what, .. }) => {
            assert_eq!((file.as_str(), what), (shard.file.as_str(), "SHA-256"));
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    bytes.truncate(middle);
    std::fs::write(&path, &bytes).expect("truncate");
    let err = read_web_model(dir.path()).expect_err("a partial shard");
    assert!(
        matches!(err, WeightError::Integrity { what: "size", .. }),
        "{err}"
    );
    std::fs::remove_file(&path).expect("remove");
    let err = read_web_model(dir.path())
        .expect_err("a missing shard")
        .to_string();
    assert!(err.contains(&shard.file), "{err}");
}
