//! Commands the web UI may invoke; each parses the page's request and answers through the app crate.

pub mod about;
pub mod adapters;
pub mod datasets;
pub mod demo;
pub mod dialogs;
pub mod eval;
pub mod methods;
pub mod models;
pub mod playground;
pub mod runs;
pub mod serve;

use peft_studio_app::catalog::Catalog;

use crate::error::CommandResult;

/// The studio's catalog (created with its folder on first use).
pub(crate) fn open_catalog() -> CommandResult<Catalog> {
    Ok(peft_studio_app::open_catalog_at(
        &peft_studio_app::default_catalog_path(),
    )?)
}
