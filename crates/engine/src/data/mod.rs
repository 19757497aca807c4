//! Training data: reading records, tokenizing them with a loss mask, and batching.

pub mod batch;
pub mod jsonl;

pub use batch::{Batch, Example, Examples};
pub use jsonl::read_jsonl;
