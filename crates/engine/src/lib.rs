//! PEFT Studio's engine: a Llama-family decoder written for training, parameter-efficient
//! methods, data, the trainer, generation and adapter export. No async runtime, no database,
//! no GUI: the catalog, the app and the front ends build on it.
#![warn(missing_docs)]

pub mod chat;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod fixtures;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod handoff;
pub mod hash;
pub mod library;
pub mod memory;
pub mod model;
pub mod ops;
pub mod peft;
pub mod plan;
pub mod run;
pub mod run_folder;
pub mod sysinfo;
pub mod threads;
pub mod tokenizer;
pub mod train;

pub use error::{EngineError, Result};
