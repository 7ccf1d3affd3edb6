//! Any bytes as an input image (PNG, JPEG or WebP, at most 4096x4096, checked by the header
//! before decoding), and as base64 text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_server::inputs::{decode_base64, decode_image};

fuzz_target!(|data: &[u8]| {
    let _ = decode_image("image", data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_base64("initImage", text);
    }
});
