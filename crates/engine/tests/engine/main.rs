//! Integration tests of the engine, on tiny models written to real files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

mod common;
mod data;
mod decode;
mod errors;
mod export;
mod fused;
mod fuzz_replay;
mod generate;
mod gradients;
mod handoff;
mod library;
mod model;
mod model_export;
mod multimodal;
mod plan;
mod precision;
mod quantized;
mod reference;
mod resume;
mod t5;
mod training;
