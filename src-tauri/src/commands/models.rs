//! The model library, shared with the CLI through `models.json` in the studio home.

use peft_studio_engine::library::{studio_home, ModelEntry, Registry};

/// The installed models; errors come back as the message the UI shows.
#[tauri::command]
pub fn list_models() -> Result<Vec<ModelEntry>, String> {
    Registry::open(&studio_home())
        .map(|r| r.models().to_vec())
        .map_err(|e| e.to_string())
}
