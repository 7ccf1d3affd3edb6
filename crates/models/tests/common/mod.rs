//! What the model tests share: the fixture paths, diffusers' reference tensors, the error
//! measure.

use std::path::PathBuf;
use std::sync::OnceLock;

use sd_weights::SafetensorsFile;

/// `shared/fixtures`, beside the repository.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

fn load(file: &str) -> SafetensorsFile {
    SafetensorsFile::read(&fixtures().join("tiny-sd-digits-refs").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `refs.safetensors`.
#[allow(dead_code)] // img2img.rs uses only the second file
pub fn refs() -> &'static SafetensorsFile {
    static REFS: OnceLock<SafetensorsFile> = OnceLock::new();
    REFS.get_or_init(|| load("refs.safetensors"))
}

/// `more_refs.safetensors`.
#[allow(dead_code)] // parity.rs uses only the first file
pub fn more_refs() -> &'static SafetensorsFile {
    static REFS: OnceLock<SafetensorsFile> = OnceLock::new();
    REFS.get_or_init(|| load("more_refs.safetensors"))
}

/// A tensor of `file` as f32 values.
pub fn tensor(file: &SafetensorsFile, name: &str) -> Vec<f32> {
    file.tensor(name)
        .unwrap_or_else(|| panic!("no tensor {name} in {}", file.label()))
        .to_f32()
        .expect("f32 reference")
}

/// A tensor of `refs.safetensors`.
#[allow(dead_code)] // img2img.rs uses only the second file
pub fn reference(name: &str) -> Vec<f32> {
    tensor(refs(), name)
}

/// The largest absolute difference.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
