//! Generated images as PNG with the generation parameters in an A1111-style `parameters` text
//! chunk, which image viewers and other SD tools read back. The CLI writes these bytes to files;
//! the browser hands them out as a `Blob`.

use sd_core::params::GenerationParams;

/// The `parameters` text: prompt, negative prompt, then one line of settings.
pub fn parameters_text(params: &GenerationParams, seed: u64, model: &str) -> String {
    let mut text = params.prompt.clone();
    if !params.negative_prompt.is_empty() {
        text.push_str(&format!("\nNegative prompt: {}", params.negative_prompt));
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {model}",
        params.steps,
        params.sampler.a1111_name(),
        params.guidance_scale,
        params.width,
        params.height
    ));
    text
}

/// Encodes 8-bit RGB `pixels` as a PNG carrying `parameters` (a `tEXt` chunk when the text is
/// Latin-1, else an `iTXt` chunk, as PNG requires).
pub fn encode_png(
    width: u32,
    height: u32,
    pixels: &[u8],
    parameters: &str,
) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let chunk = if parameters.chars().all(|c| u32::from(c) < 256) {
        encoder.add_text_chunk("parameters".into(), parameters.into())
    } else {
        encoder.add_itxt_chunk("parameters".into(), parameters.into())
    };
    chunk.map_err(|e| format!("cannot add the parameters text chunk: {e}"))?;
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(pixels).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sd_core::sampler::SamplerKind;

    #[test]
    fn parameters_read_like_a1111() {
        let params = GenerationParams {
            prompt: "a red digit seven on a blue background".into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            guidance_scale: 5.0,
            sampler: SamplerKind::EULER_A,
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
        let bytes = encode_png(2, 1, &[255, 0, 0, 0, 0, 255], "hello\nSteps: 1").expect("encode");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("read");
        let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
        reader.next_frame(&mut pixels).expect("pixels");
        assert_eq!(pixels, [255, 0, 0, 0, 0, 255]);
        let text = &reader.info().uncompressed_latin1_text;
        assert!(
            text.iter()
                .any(|t| t.keyword == "parameters" && t.text == "hello\nSteps: 1"),
            "{text:?}"
        );
    }

    #[test]
    fn prompts_beyond_latin1_go_in_an_international_chunk() {
        let bytes = encode_png(1, 1, &[1, 2, 3], "赤い数字 7").expect("encode");
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("read");
        let itxt = &reader.info().utf8_text;
        assert!(
            itxt.iter()
                .any(|t| t.keyword == "parameters" && t.get_text().expect("text") == "赤い数字 7"),
            "{itxt:?}"
        );
    }
}
