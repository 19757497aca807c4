//! The demo a first-time user trains: a small chat dataset and settings that show a falling
//! loss within a minute or two on a CPU.

use std::path::{Path, PathBuf};

use peft_studio_engine::fsutil::write_atomic;
use peft_studio_engine::train::TrainConfig;

/// The demo dataset (chat records, JSONL).
pub const DEMO_DATASET: &str = include_str!("../../../assets/demo/dataset.jsonl");

/// Writes the demo dataset as `dir/dataset.jsonl` (unless it is there) and returns its path.
pub fn write_demo_dataset(dir: &Path) -> peft_studio_engine::Result<PathBuf> {
    let path = dir.join("dataset.jsonl");
    if !path.is_file() {
        write_atomic(&path, DEMO_DATASET.as_bytes())?;
    }
    Ok(path)
}

/// The demo's training settings: small batches, a held-out fifth, frequent evaluation.
pub fn demo_train(lr: f64, epochs: usize) -> TrainConfig {
    TrainConfig {
        lr,
        epochs,
        batch_size: 4,
        seq_len: 128,
        val_fraction: 0.2,
        eval_every: 4,
        checkpoint_every: 25,
        ..Default::default()
    }
}
