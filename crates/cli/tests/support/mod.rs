//! Code shared by the integration tests (`mod support;`).

// Each test binary uses a different part of the support code.
#![allow(dead_code)]

pub mod inputs;
pub mod judge;
