//! Any bytes as a safetensors file: the header cap and count, the offsets, every tensor read
//! out as f32 (what a loader does next).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_weights::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = SafetensorsFile::from_vec("fuzz.safetensors", data.to_vec()) {
        for tensor in file.tensors() {
            let _ = tensor.to_f32();
        }
    }
});
