//! The demo a first-time user trains: a small chat dataset, the method and the settings that
//! show a falling loss within a minute or two on a CPU. The window's "Train the demo" and the
//! command line's `demo` both read them here.

use std::path::{Path, PathBuf};

use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};
use peft_studio_engine::fsutil::write_atomic;
use peft_studio_engine::library::studio_home;
use peft_studio_engine::peft::TargetModules;
use serde::Serialize;

use crate::error::Result;
use crate::models::{installed, list, resolve_model};
use crate::runs::{MethodConfig, RunConfig, TrainConfig};

/// The demo dataset (chat records, JSONL).
pub const DEMO_DATASET: &str = include_str!("../../../assets/demo/dataset.jsonl");

/// The model the demo prefers when it is installed.
pub const DEMO_MODEL: &str = "SmolLM2-135M-Instruct";

/// Writes the demo dataset as `dir/dataset.jsonl` (unless it is there) and returns its path.
pub fn write_demo_dataset(dir: &Path) -> Result<PathBuf> {
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

/// The demo's method on a pretrained model: LoRA r=8 on the attention projections.
pub fn demo_method() -> MethodConfig {
    MethodConfig {
        r: 8,
        lora_alpha: 16.0,
        target_modules: Some(TargetModules::parse_cli("q_proj,k_proj,v_proj,o_proj")),
        ..Default::default()
    }
}

/// What the "Train the demo" button fills the New run form with.
#[derive(Debug, Serialize)]
pub struct DemoSetup {
    /// The demo model if installed, else the first installed model; none when there is none.
    pub model: Option<String>,
    /// The demo dataset, written into the studio's data folder.
    pub dataset: PathBuf,
    /// The method and its settings.
    pub method: MethodConfig,
    /// Training settings suited to the demo.
    pub train: TrainConfig,
}

/// Writes the demo dataset (once) into the studio's data folder and picks the model to train
/// it on.
pub fn setup() -> Result<DemoSetup> {
    let dataset = write_demo_dataset(&studio_home().join("demo"))?;
    let model = match installed(DEMO_MODEL)? {
        Some(m) => Some(m.name),
        None => list()?.first().map(|m| m.name.clone()),
    };
    Ok(DemoSetup {
        model,
        dataset,
        method: demo_method(),
        train: demo_train(2e-3, 2),
    })
}

/// Writes the demo dataset and a run config that trains on it into `out`: with `model` (a
/// folder or an installed model's name) the demo's method at a rate suited to a pretrained
/// model, otherwise all-linear LoRA on a small model made in code (`out/model`). Returns what
/// was written, for the user.
pub fn write_demo(out: &Path, model: Option<&Path>) -> Result<String> {
    let (model, method, train, made) = match model {
        Some(model) => (
            resolve_model(model)?,
            demo_method(),
            demo_train(2e-3, 2),
            "",
        ),
        None => {
            let model = out.join("model");
            if !model.join("config.json").is_file() {
                let spec = TinySpec {
                    hidden_size: 64,
                    intermediate_size: 128,
                    ..Default::default()
                };
                write_tiny_model(&model, &spec)?;
            }
            let method = MethodConfig {
                target_modules: Some(TargetModules::Pattern("all-linear".into())),
                ..Default::default()
            };
            (model, method, demo_train(1e-2, 20), "model, ")
        }
    };
    let cfg = RunConfig {
        model,
        dataset: write_demo_dataset(out)?,
        out: out.join("runs").join("demo"),
        method,
        train,
        data: Default::default(),
        eval: Default::default(),
        target: Default::default(),
    };
    write_atomic(&out.join("run.toml"), cfg.to_toml()?.as_bytes())?;
    Ok(format!(
        "demo {made}dataset and run config written to {}",
        out.display()
    ))
}
