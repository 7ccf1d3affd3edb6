//! Any bytes as a web model's manifest.json: the format, the shards and the tensor references,
//! then the sizes a loader would allocate for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_weights::web::WebManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = WebManifest::from_json("manifest.json", data) {
        let _ = manifest.total_bytes();
        let _ = manifest.to_json();
    }
});
