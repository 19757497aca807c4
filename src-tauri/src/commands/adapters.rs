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
