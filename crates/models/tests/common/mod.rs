//! What the model tests share: the fixture paths, diffusers' reference tensors, the error
//! measure.

pub mod recorded;

use std::sync::{Arc, OnceLock};

use sd_core::params::GenerationParams;
use sd_kernels::GpuContext;
use sd_models::{Generated, Inputs, StableDiffusion};
use sd_weights::SafetensorsFile;

pub use sd_test_support::fixtures;

fn load(file: &str) -> SafetensorsFile {
    SafetensorsFile::read(&fixtures().join("tiny-sd-digits-refs").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// One GPU context for the tests of a binary (the adapter the test environment asks for).
#[allow(dead_code)] // parity.rs keeps a plain reference
pub fn context() -> Arc<GpuContext> {
    sd_test_support::gpu_context().clone()
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

/// `token_ids_<i>` of `refs.safetensors` (prompt i, padded to 77) as u32 ids.
#[allow(dead_code)] // the tests that run the text encoder
pub fn token_ids(i: usize) -> Vec<u32> {
    refs()
        .tensor(&format!("token_ids_{i}"))
        .expect("ids")
        .to_i64()
        .expect("i64 ids")
        .iter()
        .map(|&id| u32::try_from(id).expect("id fits u32"))
        .collect()
}

/// The largest absolute difference; infinite where either side is NaN or infinite (which
/// `f32::max` would otherwise skip), so a broken output never passes a bound.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(a, b)| {
            let d = (a - b).abs();
            if d.is_finite() { d } else { f32::INFINITY }
        })
        .fold(0.0, f32::max)
}

/// Runs `params` from `inputs`; returns the output and every step's latents.
#[allow(dead_code)] // parity.rs runs no pipeline
pub fn run(
    model: &StableDiffusion,
    params: &GenerationParams,
    inputs: &Inputs<'_>,
) -> (Generated, Vec<Vec<f32>>) {
    let mut steps = Vec::new();
    let mut on_step = |_: usize, latents: &[f32]| steps.push(latents.to_vec());
    let out = pollster::block_on(model.generate(params, inputs, &mut |_| {}, Some(&mut on_step)))
        .expect("generate");
    (out, steps)
}

/// The share of image values within 2/255 of diffusers'.
#[allow(dead_code)] // parity.rs runs no pipeline
pub fn image_share_within(got: &[f32], want: &[f32]) -> f64 {
    let close = got
        .iter()
        .zip(want)
        .filter(|(a, b)| (*a - *b).abs() <= 2.0 / 255.0)
        .count();
    close as f64 / want.len() as f64
}

/// Checks a run against diffusers': each step's latents (`steps[i]` against `want_steps[i]`),
/// the final latents and the image; prints the worst errors.
#[allow(dead_code)] // parity.rs runs no pipeline
pub fn assert_run_matches(
    label: &str,
    out: &Generated,
    steps: &[Vec<f32>],
    want_steps: &[&[f32]],
    want_final: &[f32],
    want_image: &[f32],
) {
    let mut worst = 0.0f32;
    for (step, (got, want)) in steps.iter().zip(want_steps).enumerate() {
        let err = max_abs_diff(got, want);
        worst = worst.max(err);
        assert!(err <= 1e-3, "{label} step {step}: {err:e} > 1e-3");
    }
    let final_err = max_abs_diff(&out.latents[0], want_final);
    let share = image_share_within(&out.pixels[0], want_image);
    println!(
        "{label}: steps within {worst:e}, final latents {final_err:e}, {:.2} % of image values within 2/255",
        100.0 * share
    );
    assert!(final_err <= 1e-3, "{label}: final {final_err:e}");
    assert!(share >= 0.99, "{label}: image {:.2} %", 100.0 * share);
}

#[allow(dead_code)] // used by the img2img tests
fn read_png(path: &std::path::Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

/// The red 7 on blue that diffusers' img2img and inpainting runs started from.
#[allow(dead_code)] // used by the img2img tests
pub fn input_image() -> image::RgbImage {
    let path = fixtures().join("tiny-sd-digits-refs/more_refs_png/img2img_input.png");
    let (w, h, color, bytes) = read_png(&path);
    assert_eq!(color, png::ColorType::Rgb, "img2img_input.png is RGB");
    image::RgbImage::from_raw(w, h, bytes).expect("RGB bytes")
}

/// `inpaint_mask.png` (white = repaint).
#[allow(dead_code)] // used by the inpainting tests
pub fn fixture_mask() -> image::GrayImage {
    let path = fixtures().join("tiny-sd-digits-refs/more_refs_png/inpaint_mask.png");
    let (w, h, color, bytes) = read_png(&path);
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("inpaint_mask.png: unexpected {other:?}"),
    };
    image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([bytes[((y * w + x) * channels) as usize]])
    })
}
