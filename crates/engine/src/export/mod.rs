//! Writing trained adapters in the formats other tools load.

pub mod adapters_lib;
pub mod gguf_lora;
pub mod merged;
pub mod peft;

pub use peft::{write_peft_dir, ExportInfo};
