//! Writes the seed corpora of the fuzz targets (`fuzz/seeds/<target>/`) from the fixtures and
//! from small inputs made here: `cargo run -p sd-server --example fuzz_seeds [-- DIR]`. The
//! seeds are committed; run this again when a format changes.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::{DynamicImage, ImageFormat, RgbImage};
use sd_test_support::fixtures;
use sd_weights::Architecture;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("create the seed folder");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

/// A safetensors file of zeros: `(name, dtype, shape, bytes per element)`.
fn safetensors(tensors: &[(&str, &str, &[usize], usize)], metadata: bool) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if metadata {
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    }
    let mut offset = 0;
    for (name, dtype, shape, size) in tensors {
        let len = shape.iter().product::<usize>() * size;
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let header = serde_json::to_vec(&header).expect("JSON");
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.resize(file.len() + offset, 0);
    file
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn main() {
    let out = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds"),
        PathBuf::from,
    );
    let fixtures = fixtures();

    // safetensors: small files of each dtype, and the empty file.
    write(&out, "safetensors", "empty", &safetensors(&[], false));
    write(
        &out,
        "safetensors",
        "dtypes",
        &safetensors(
            &[
                ("a.weight", "F32", &[2, 3], 4),
                ("b.weight", "F16", &[4], 2),
                ("c.bias", "BF16", &[2, 2], 2),
                ("d", "F64", &[1], 8),
            ],
            true,
        ),
    );

    // single_file: the headers of checkpoints written from the tiny fixtures.
    for (name, folder, arch) in [
        ("sd1", fixtures.join("tiny-sd-digits"), Architecture::Sd1),
        ("sd2", fixtures.join("tiny-arch/sd2-v"), Architecture::Sd2),
        ("sdxl", fixtures.join("tiny-arch/sdxl"), Architecture::Sdxl),
    ] {
        let file = sd_weights::write_single_file(&folder, arch).expect("write a single file");
        let len = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
        write(&out, "single_file", name, &file[8..8 + len]);
    }

    // web_manifest: the tiny digits model converted.
    let web = std::env::temp_dir().join(format!("sd-fuzz-seeds-{}", std::process::id()));
    sd_weights::web::convert_to_web(&fixtures.join("tiny-sd-digits"), &web, Some("digits"))
        .expect("convert the digits fixture");
    let manifest = std::fs::read(web.join("manifest.json")).expect("manifest.json");
    // The tokenizer's files (5 MB of vocabulary) cut short: the fuzzer mutates the structure.
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("JSON");
    if let Some(files) = manifest["files"].as_object_mut() {
        for text in files.values_mut() {
            if text.as_str().is_some_and(|t| t.len() > 4096) {
                *text = serde_json::Value::from("{}");
            }
        }
    }
    write(
        &out,
        "web_manifest",
        "digits",
        manifest.to_string().as_bytes(),
    );
    let _ = std::fs::remove_dir_all(&web);

    // configs: kind byte (0 UNet, 1 VAE, 2 CLIP, 3 model_index, 4 scheduler), steps byte, JSON.
    for (model, name) in [
        (fixtures.join("tiny-sd-digits"), "digits"),
        (fixtures.join("tiny-arch/sdxl"), "sdxl"),
        (fixtures.join("tiny-arch/lcm"), "lcm"),
        (fixtures.join("tiny-arch/sd2-v"), "sd2-v"),
    ] {
        for (kind, file) in [
            (0u8, "unet/config.json"),
            (1, "vae/config.json"),
            (2, "text_encoder/config.json"),
            (3, "model_index.json"),
            (4, "scheduler/scheduler_config.json"),
        ] {
            let Ok(json) = std::fs::read(model.join(file)) else {
                continue;
            };
            let mut seed = vec![kind, 19];
            seed.extend_from_slice(&json);
            let file = file.replace('/', "-");
            write(&out, "configs", &format!("{name}-{file}"), &seed);
        }
    }

    // images: each format, and base64 text.
    let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([x as u8 * 30, y as u8 * 30, 128])
    }));
    let png = encoded(&rgb, ImageFormat::Png);
    write(&out, "images", "rgb-png", &png);
    write(
        &out,
        "images",
        "luma-alpha-png",
        &encoded(
            &DynamicImage::ImageLumaA8(rgb.to_luma_alpha8()),
            ImageFormat::Png,
        ),
    );
    write(
        &out,
        "images",
        "rgb-jpeg",
        &encoded(&rgb, ImageFormat::Jpeg),
    );
    write(
        &out,
        "images",
        "rgba-webp",
        &encoded(&DynamicImage::ImageRgba8(rgb.to_rgba8()), ImageFormat::WebP),
    );
    let b64 = BASE64.encode(&png);
    write(&out, "images", "base64", b64.as_bytes());
    write(
        &out,
        "images",
        "data-url",
        format!("data:image/png;base64,{b64}").as_bytes(),
    );

    // requests: dialect byte (0 /v1/images/generations, 1 /v1/jobs, 2 /task), then the body.
    let mask = BASE64.encode(encoded(
        &DynamicImage::ImageLuma8(rgb.to_luma8()),
        ImageFormat::Png,
    ));
    let bodies = [
        (
            0u8,
            "generation",
            serde_json::json!({"prompt": "a red digit seven", "negativePrompt": "blurry", "steps": 20, "cfgScale": 7.5, "seed": 1, "sampler": "euler_a", "width": 64, "height": 64, "count": 2, "format": "png"}),
        ),
        (
            0,
            "inpaint",
            serde_json::json!({"prompt": "a 3", "initImage": b64, "mask": mask, "strength": 0.8, "steps": 4}),
        ),
        (
            1,
            "generate",
            serde_json::json!({"operation": {"type": "SDGenerate", "prompt": "a 7", "steps": 8, "guidance_scale": 5, "seed": 3, "width": 64, "height": 64}}),
        ),
        (
            1,
            "transform",
            serde_json::json!({"operation": {"type": "ImageTransform", "prompt": "a 1", "image": b64, "mask": mask, "strength": 0.6}}),
        ),
        (
            2,
            "task",
            serde_json::json!({"task_type": "text-to-image", "params": {"provider": "diffusers", "model_id": "digits", "prompt": "a 5", "negative_prompt": "x", "steps": 4, "guidance_scale": 3, "seed": 2}}),
        ),
    ];
    for (kind, name, body) in bodies {
        let mut seed = vec![kind];
        seed.extend_from_slice(body.to_string().as_bytes());
        write(&out, "requests", name, &seed);
    }

    // multipart: an edit form (boundary `fuzz-boundary`, as the target sends it).
    let mut form = Vec::new();
    for (name, value) in [
        ("prompt", "a red digit three"),
        ("steps", "4"),
        ("cfgScale", "5"),
        ("strength", "1"),
        ("format", "webp"),
    ] {
        form.extend_from_slice(
            format!("--fuzz-boundary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    for (name, bytes) in [("image", &png), ("mask", &png)] {
        form.extend_from_slice(
            format!("--fuzz-boundary\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
        );
        form.extend_from_slice(bytes);
        form.extend_from_slice(b"\r\n");
    }
    form.extend_from_slice(b"--fuzz-boundary--\r\n");
    write(&out, "multipart", "edit", &form);
    println!("seeds written under {}", out.display());
}
