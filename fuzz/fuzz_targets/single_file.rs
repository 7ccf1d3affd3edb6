//! A single-file checkpoint's header (JSON: key names, dtypes, shapes, offsets): the target
//! appends the zero bytes its offsets ask for (up to 1 MiB), so that mutations of names and
//! shapes reach the architecture detection and the key renaming instead of stopping at the
//! offsets check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_weights::{SafetensorsFile, SingleFileOptions, read_single_file};
use serde_json::Value;

const MAX_DATA: u64 = 1 << 20;

fuzz_target!(|header: &[u8]| {
    let Ok(Value::Object(entries)) = serde_json::from_slice::<Value>(header) else {
        return;
    };
    let end = entries
        .values()
        .filter_map(|e| e.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    if end > MAX_DATA {
        return;
    }
    let mut file = Vec::with_capacity(8 + header.len() + end as usize);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(header);
    file.resize(8 + header.len() + end as usize, 0);
    if let Ok(file) = SafetensorsFile::from_vec("fuzz.safetensors", file) {
        let _ = read_single_file(&file, &SingleFileOptions::new());
    }
});
