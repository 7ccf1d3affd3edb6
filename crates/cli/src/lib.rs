//! The native command line's library: what `sd` does, callable from tests (the end-to-end
//! tests run exactly the CLI's code path).

pub mod bench;
pub mod cost;
pub mod download;
pub mod generate;
pub mod serve;
