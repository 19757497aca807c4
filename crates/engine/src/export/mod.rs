//! Writing trained adapters in the formats Python tools load (PEFT, the adapters library), the
//! merged model as a Hugging Face folder, and the model card; llama.cpp's GGUF is `gguf`.

pub mod adapters_lib;
pub mod card;
pub mod merged;
pub mod peft;

pub use peft::{write_peft_dir, ExportInfo};
