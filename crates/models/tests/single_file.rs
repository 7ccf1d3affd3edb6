//! Single-file checkpoints through the one loader: the digits fixture written in the original
//! Stability/A1111 layout generates exactly what its diffusers folder generates; pickle files
//! are refused; a diffusers folder without one of its parts names it.

#[allow(dead_code)] // this file needs only the fixture path and the GPU context
mod common;

use std::sync::Arc;

use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_kernels::DType;
use sd_models::{Inputs, ModelError, ModelSource, StableDiffusion};
use sd_weights::{Architecture, SingleFileOptions, WeightError, write_single_file};

use common::fixtures;

/// Writes the diffusers folder `folder` as one original-layout file of `arch`, loads both (the
/// file with the folder's configs, as the tiny models' head counts cannot be read from their
/// shapes; diffusers' `from_single_file(config=...)` takes them so) and checks that they
/// generate the same image bit for bit: the same tensors under other names.
fn assert_single_file_generates_as_folder(
    folder: &std::path::Path,
    arch: Architecture,
    sampler: SamplerKind,
) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("model.safetensors");
    std::fs::write(
        &file,
        write_single_file(folder, arch).expect("write the single file"),
    )
    .expect("save");
    let single = ModelSource::open_with(&file, &SingleFileOptions::new().config_dir(folder))
        .expect("open the single file");
    assert!(matches!(single, ModelSource::Memory(_)));

    let ctx = common::context();
    let params = GenerationParams {
        prompt: "a red digit seven on a blue background".into(),
        steps: 4,
        guidance_scale: 5.0,
        seed: 7,
        sampler,
        width: 64,
        height: 64,
        ..GenerationParams::default()
    };
    let mut outputs = Vec::new();
    for source in [ModelSource::folder(folder), single] {
        let sd = StableDiffusion::load(Arc::clone(&ctx), &source, DType::F32).expect("load");
        let out = pollster::block_on(sd.generate(&params, &Inputs::default(), &mut |_| {}, None))
            .expect("generate");
        outputs.push(out);
    }
    assert!(
        outputs[0].pixels == outputs[1].pixels,
        "{arch:?}: the single file and its folder disagree"
    );
    assert!(outputs[0].images == outputs[1].images);
}

#[test]
fn a_single_file_generates_what_its_folder_generates() {
    let fixtures = fixtures();
    assert_single_file_generates_as_folder(
        &fixtures.join("tiny-sd-digits"),
        Architecture::Sd1,
        SamplerKind::EULER,
    );
    assert_single_file_generates_as_folder(
        &fixtures.join("tiny-arch/sd2-v"),
        Architecture::Sd2,
        SamplerKind::DDIM,
    );
    assert_single_file_generates_as_folder(
        &fixtures.join("tiny-arch/sdxl"),
        Architecture::Sdxl,
        SamplerKind::EULER,
    );
}

#[test]
fn pickle_checkpoints_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    for name in ["model.ckpt", "model.pt", "model.pth", "pytorch_model.bin"] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"\x80\x02}q\x00.").expect("write");
        let err = ModelSource::open(&path).expect_err("a pickle");
        assert!(
            matches!(err, ModelError::Weights(WeightError::Pickle { .. })),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn a_folder_missing_a_part_names_it() {
    let folder = fixtures().join("tiny-sd-digits");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        folder.join("model_index.json"),
        dir.path().join("model_index.json"),
    )
    .expect("copy");
    for part in ["scheduler", "text_encoder", "tokenizer", "unet"] {
        std::fs::create_dir(dir.path().join(part)).expect("mkdir");
    }
    let err = ModelSource::open(dir.path()).expect_err("no vae/");
    let message = err.to_string();
    assert!(
        message.contains("`vae`") && message.contains("AutoencoderKL"),
        "{message}"
    );
    std::fs::create_dir(dir.path().join("vae")).expect("mkdir");
    assert!(ModelSource::open(dir.path()).is_ok());
}
