//! Writing trained adapters in the formats other tools load.

pub mod adapters_lib;
pub mod card;
pub mod gguf_lora;
pub mod gguf_model;
pub mod gguf_vocab;
pub mod gguf_write;
pub mod merged;
pub mod peft;

pub use peft::{write_peft_dir, ExportInfo};
