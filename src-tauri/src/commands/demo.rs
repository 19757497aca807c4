//! The first-run path: a demo dataset and the model to train it on.

use std::path::PathBuf;

use peft_studio_app::demo::{demo_train, write_demo_dataset};
use peft_studio_engine::library::{studio_home, Registry};
use peft_studio_engine::train::TrainConfig;
use serde::Serialize;

use crate::error::{blocking, CommandResult};

/// The model the demo prefers when it is installed.
const DEMO_MODEL: &str = "SmolLM2-135M-Instruct";

/// What the "Train the demo" button fills the New run form with.
#[derive(Debug, Serialize)]
pub struct DemoSetup {
    /// The demo model if installed, else the first installed model; none when there is none.
    pub model: Option<String>,
    /// The demo dataset, written into the studio's data folder.
    pub dataset: PathBuf,
    /// Training settings suited to the demo.
    pub train: TrainConfig,
}

/// Writes the demo dataset (once) and picks the model to train it on.
#[tauri::command]
pub async fn demo_setup() -> CommandResult<DemoSetup> {
    blocking(|| {
        let home = studio_home();
        let dataset = write_demo_dataset(&home.join("demo"))?;
        let registry = Registry::open(&home)?;
        let model = registry
            .get(DEMO_MODEL)
            .or_else(|| registry.models().first())
            .map(|m| m.name.clone());
        Ok(DemoSetup {
            model,
            dataset,
            train: demo_train(2e-3, 2),
        })
    })
    .await
}
