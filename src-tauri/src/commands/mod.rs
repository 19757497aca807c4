//! Commands the web UI may invoke; each is a thin layer over the crates.

pub mod about;
pub mod datasets;
pub mod demo;
pub mod methods;
pub mod models;
pub mod runs;
