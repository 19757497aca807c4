//! Adapters the studio's runs produced, for the Adapters screen and the playground.

use peft_studio_app::catalog::AdapterRecord;
use serde::Serialize;

use super::open_catalog;
use crate::error::{blocking, CommandResult};

/// An adapter and whether its files are still there.
#[derive(Debug, Serialize)]
pub struct AdapterView {
    /// The catalog's record.
    #[serde(flatten)]
    pub record: AdapterRecord,
    /// Whether its folder or file exists.
    pub present: bool,
}

/// Every recorded adapter, oldest first.
#[tauri::command]
pub async fn list_adapters() -> CommandResult<Vec<AdapterView>> {
    blocking(|| {
        Ok(open_catalog()?
            .adapters(None)?
            .into_iter()
            .map(|record| AdapterView {
                present: std::path::Path::new(&record.path).exists(),
                record,
            })
            .collect())
    })
    .await
}

/// Forgets an adapter; its folder is deleted too when the studio wrote it inside its own data
/// folder (a run's adapter), and kept when it lies elsewhere (an export the user placed).
#[tauri::command]
pub async fn delete_adapter(id: i64) -> CommandResult<bool> {
    blocking(move || Ok(peft_studio_app::adapters::delete(&open_catalog()?, id)?)).await
}

/// Opens a recorded adapter's folder in the system's file manager.
#[tauri::command]
pub async fn reveal_adapter(id: i64) -> CommandResult<()> {
    blocking(move || {
        let record = open_catalog()?
            .adapters(None)?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| crate::error::CommandError {
                message: format!("adapter {id} is not in the catalog"),
                hint: None,
            })?;
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        std::process::Command::new(opener)
            .arg(&record.path)
            .spawn()
            .map(|_| ())
            .map_err(|e| {
                crate::error::CommandError::with_hint(
                    format!("{opener} {}: {e}", record.path),
                    "open the folder yourself; its path is listed",
                )
            })
    })
    .await
}

/// Checks a shared adapter (a PEFT or adapters-library folder, or a GGUF LoRA file) and adds
/// it to the list. With `model` (an installed model's name or a folder) the adapter is also
/// checked to fit that model; a GGUF LoRA needs it.
#[tauri::command]
pub async fn import_adapter(
    path: std::path::PathBuf,
    model: Option<std::path::PathBuf>,
    chosen: tauri::State<'_, crate::paths::Chosen>,
) -> CommandResult<peft_studio_app::adapters::ImportedAdapter> {
    let path = crate::paths::read_source(&path, crate::paths::ADAPTER, &chosen)?;
    blocking(move || {
        Ok(peft_studio_app::adapters::import_into_library(
            &open_catalog()?,
            &path,
            model.as_deref(),
        )?)
    })
    .await
}
