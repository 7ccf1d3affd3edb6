//! The wasm-bindgen API of the npm package. Arrives with the browser issue; until then this crate
//! only proves that the kernel layer builds for `wasm32-unknown-unknown`.

pub use sd_kernels as kernels;
