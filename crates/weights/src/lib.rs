//! Weight files: safetensors reading, dtype conversion, the diffusers-folder and single-file key
//! layouts, and the sharded web manifest. Filled in with the text-to-image work (issue 4) and the
//! web converter (issue 5); empty until then.
