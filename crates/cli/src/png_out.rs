//! Writing generated images as PNG with the generation parameters in an A1111-style
//! `parameters` text chunk, which image viewers and other SD tools read back.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};
use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;

/// The sampler's name as AUTOMATIC1111 writes it.
fn a1111_sampler(kind: SamplerKind) -> &'static str {
    match kind {
        SamplerKind::Euler => "Euler",
        SamplerKind::EulerKarras => "Euler Karras",
        SamplerKind::EulerAncestral => "Euler a",
        SamplerKind::Ddim => "DDIM",
        SamplerKind::DpmPP2M => "DPM++ 2M",
        SamplerKind::DpmPP2MKarras => "DPM++ 2M Karras",
        other => other.name(),
    }
}

/// The `parameters` text: prompt, negative prompt, then one line of settings.
pub fn parameters_text(params: &GenerationParams, seed: u64, model: &str) -> String {
    let mut text = params.prompt.clone();
    if !params.negative_prompt.is_empty() {
        text.push_str(&format!("\nNegative prompt: {}", params.negative_prompt));
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {model}",
        params.steps,
        a1111_sampler(params.sampler),
        params.guidance_scale,
        params.width,
        params.height
    ));
    text
}

/// Writes 8-bit RGB `pixels` as a PNG carrying `parameters`.
pub fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    pixels: &[u8],
    parameters: &str,
) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk("parameters".to_string(), parameters.to_string())
        .context("cannot add the parameters text chunk")?;
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(pixels)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_read_like_a1111() {
        let params = GenerationParams {
            prompt: "a red digit seven on a blue background".into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            guidance_scale: 5.0,
            sampler: SamplerKind::EulerAncestral,
            width: 64,
            height: 64,
            ..GenerationParams::default()
        };
        assert_eq!(
            parameters_text(&params, 42, "digits"),
            "a red digit seven on a blue background\nNegative prompt: blurry\n\
             Steps: 20, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 64x64, Model: digits"
        );
    }

    #[test]
    fn the_png_carries_the_parameters() {
        let dir = std::env::temp_dir().join(format!("sd-png-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("x.png");
        write_png(&path, 2, 1, &[255, 0, 0, 0, 0, 255], "hello\nSteps: 1").expect("write");
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&path).expect("open")));
        let reader = decoder.read_info().expect("read");
        let text = &reader.info().uncompressed_latin1_text;
        assert!(
            text.iter()
                .any(|t| t.keyword == "parameters" && t.text == "hello\nSteps: 1"),
            "{text:?}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
