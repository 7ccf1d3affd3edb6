//! GPU kernel tests: every kernel against its CPU reference on fresh random inputs (fixed
//! seeds), outputs poisoned with NaN before the run, sizes that are not multiples of the tiles,
//! f32 weights and both f16 paths (native `shader-f16` and packed `u32`).
//!
//! They run on whatever adapter wgpu picks, and fail unless it is on the expected backend
//! (`SD_EXPECT_BACKEND`, Vulkan by default: lavapipe in CI).

mod attention;
mod common;
mod context;
mod conv2d;
mod elementwise;
mod linear;
mod norm;
mod replay;
mod step_program;
