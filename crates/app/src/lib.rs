//! PEFT Studio's use cases, shared by the CLI and the desktop shell (no Tauri here): runs
//! trained in a worker process that records into the catalog, attaching to live runs,
//! comparisons and charts.

#![warn(missing_docs)]

pub mod adapters;
pub mod allocator;
pub mod chart;
pub mod compare;
pub mod demo;
mod error;
pub mod export;
pub mod follow;
pub mod launch;
pub mod worker;

use std::path::PathBuf;

pub use error::{AppError, Result};
pub use peft_studio_catalog as catalog;

/// The catalog file: `PEFT_STUDIO_CATALOG` when set, else `catalog.sqlite` in the studio's
/// data folder (`PEFT_STUDIO_HOME`, `XDG_DATA_HOME/peft-studio` or
/// `~/.local/share/peft-studio`).
pub fn default_catalog_path() -> PathBuf {
    match std::env::var_os("PEFT_STUDIO_CATALOG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => peft_studio_engine::library::studio_home().join("catalog.sqlite"),
    }
}
