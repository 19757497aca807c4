//! The first-run path: a demo dataset, and the model and settings to train it with.

use peft_studio_app::demo::{setup, DemoSetup};

use crate::error::{blocking, CommandResult};

/// Writes the demo dataset (once) and picks the model to train it on.
#[tauri::command]
pub async fn demo_setup() -> CommandResult<DemoSetup> {
    blocking(|| Ok(setup()?)).await
}
