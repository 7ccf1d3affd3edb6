//! The wasm-bindgen API under the npm package (`crates/web/js` is the JavaScript around it):
//! [`WasmModel::load`] takes a web model's manifest and its verified shards and uploads them to
//! WebGPU; [`WasmModel::generate`] runs a request with progress, previews and an `AbortSignal`;
//! [`parse_manifest`] checks a manifest before anything is downloaded.
//!
//! Fetching, hashing and caching shards is the JavaScript side's job (fetch streams,
//! `crypto.subtle`, IndexedDB); everything that needs the model's semantics (manifest checks,
//! request validation, the pipeline, PNG encoding) is here, shared with the native build.

mod errors;
mod inputs;
mod model;
mod request;

pub use errors::ErrorCode;
pub use model::{WasmModel, parse_manifest};
pub use request::parse_request;
