//! Integration tests of the engine, on tiny models written to real files.

mod common;
mod errors;
mod export;
mod generate;
mod gradients;
mod model;
mod plan;
mod resume;
mod training;
