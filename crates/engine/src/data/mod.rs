//! Training data: reading files (JSONL, JSON, CSV/TSV, text), record formats, chat templates
//! and loss masks, validation reports, statistics, and batching.

pub mod batch;
pub mod cache;
pub mod config;
pub mod encode;
pub mod format;
pub mod load;
pub mod read;
pub mod stats;

pub use batch::{Batch, Example, Examples};
pub use cache::TokenCache;
pub use config::{DataConfig, DataReport, OnBadRecords, Problem, TrainOn, Truncation};
pub use encode::Encoder;
pub use format::{Format, Record};
pub use load::{load_examples, load_examples_cached};
