//! The Llama-family decoder: configuration, layers, differentiable ops and loading.

pub mod adapters;
pub mod attend;
pub mod base_weight;
pub mod blocks;
pub mod config;
pub mod family;
pub mod frozen;
pub mod fused;
pub mod generic;
pub mod gguf;
pub mod linear;
pub mod llama;
pub mod load;
pub mod multimodal;
pub mod quantized;
pub mod reentry;
pub mod rope;
pub mod t5;

pub use crate::ops::ForwardCtx;
pub use base_weight::BaseWeight;
pub use config::LlamaConfig;
pub use linear::Linear;
pub use llama::{KvCache, LlamaModel};
pub use load::load_model;
