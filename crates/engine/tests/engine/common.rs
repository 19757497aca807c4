//! Shared helpers: tiny models and datasets on disk.

use std::path::{Path, PathBuf};

use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};
use peft_studio_engine::peft::{MethodConfig, MethodKind, TargetModules};
use peft_studio_engine::run::RunConfig;
use peft_studio_engine::train::TrainConfig;

pub fn tiny_model(dir: &Path, spec: &TinySpec) -> PathBuf {
    let p = dir.join("model");
    write_tiny_model(&p, spec).expect("write tiny model");
    p
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A dataset small enough to memorise.
pub fn memorisable_dataset(dir: &Path) -> PathBuf {
    let lines = [
        r#"{"text": "the cat sat on the mat"}"#,
        r#"{"prompt": "2+2=", "completion": "4, said the owl"}"#,
        r#"{"text": "the cat sat on the mat"}"#,
        r#"{"prompt": "2+2=", "completion": "4, said the owl"}"#,
    ];
    write(dir, "data.jsonl", &lines.join("\n"))
}

pub fn lora_method(r: usize, targets: &str) -> MethodConfig {
    MethodConfig {
        kind: MethodKind::Lora,
        r,
        lora_alpha: 2.0 * r as f64,
        target_modules: Some(TargetModules::parse_cli(targets)),
        ..Default::default()
    }
}

pub fn run_config(
    dir: &Path,
    model: PathBuf,
    dataset: PathBuf,
    method: MethodConfig,
    train: TrainConfig,
) -> RunConfig {
    RunConfig {
        model,
        dataset,
        out: dir.join("run"),
        method,
        train,
        data: Default::default(),
    }
}

/// The largest absolute difference between two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("s")
}
