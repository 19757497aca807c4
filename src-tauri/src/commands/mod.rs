//! Commands the web UI may invoke; each is a one-liner into the crates.

pub mod about;
pub mod models;
