//! The dataset check: what the studio will make of a file before training on it.

use std::path::PathBuf;

use peft_studio_app::datasets::{inspect, DataConfig, DatasetView, Format};

use crate::error::{blocking, CommandResult};

/// Records the check renders with the model's template.
const PREVIEW_RECORDS: usize = 5;

/// Reads `path` as training would (default data settings, the record format detected or the
/// one given); with `model`, also renders a preview with that model's tokenizer and counts
/// tokens.
#[tauri::command]
pub async fn inspect_dataset(
    path: PathBuf,
    model: Option<String>,
    format: Option<Format>,
    chosen: tauri::State<'_, crate::paths::Chosen>,
) -> CommandResult<DatasetView> {
    let path = crate::paths::read_source(&path, crate::paths::DATASET, &chosen)?;
    blocking(move || {
        let cfg = DataConfig {
            format: format.unwrap_or_default(),
            ..DataConfig::default()
        };
        let model = model.map(PathBuf::from);
        Ok(inspect(
            &path,
            &cfg,
            model.as_deref(),
            PREVIEW_RECORDS,
            usize::MAX,
        )?)
    })
    .await
}
