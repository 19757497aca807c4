//! Commands the web UI may invoke; each is a thin layer over the crates.

pub mod about;
pub mod adapters;
pub mod datasets;
pub mod demo;
pub mod dialogs;
pub mod methods;
pub mod models;
pub mod playground;
pub mod runs;

use peft_studio_app::catalog::Catalog;

use crate::error::{CommandError, CommandResult};

/// The studio's catalog (created with its folder on first use).
pub(crate) fn open_catalog() -> CommandResult<Catalog> {
    let path = peft_studio_app::default_catalog_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CommandError {
            message: format!("{}: {e}", dir.display()),
            hint: None,
        })?;
    }
    Ok(Catalog::open(&path)?)
}
