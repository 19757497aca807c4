//! PEFT Studio's use cases, the one door of both front ends (the desktop shell and the CLI,
//! which parse and present, nothing more; no Tauri here): runs trained in a worker process
//! that records into the catalog, attaching to live runs, the plan, datasets, the model
//! library, the playground, adapters, exports, comparisons, charts and the demo. The engine
//! types the front ends read and write are re-exported by the module they belong to.

#![warn(missing_docs)]

pub mod adapters;
pub mod allocator;
pub mod bench;
pub mod chart;
pub mod compare;
pub mod datasets;
pub mod demo;
pub mod describe;
pub mod device;
mod error;
pub mod eval;
pub mod export;
pub mod follow;
pub mod launch;
pub mod logits;
pub mod models;
pub mod plan;
pub mod playground;
pub mod runs;
pub mod serve;
pub mod text;
pub mod worker;

use std::path::PathBuf;

pub use error::{AppError, Result};
pub use peft_studio_catalog as catalog;
pub use peft_studio_engine::EngineError;

/// The catalog file: `PEFT_STUDIO_CATALOG` when set, else `catalog.sqlite` in the studio's
/// data folder (`PEFT_STUDIO_HOME`, `XDG_DATA_HOME/peft-studio` or
/// `~/.local/share/peft-studio`).
pub fn default_catalog_path() -> PathBuf {
    match std::env::var_os("PEFT_STUDIO_CATALOG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => studio_home().join("catalog.sqlite"),
    }
}

/// The studio's data folder (`PEFT_STUDIO_HOME`, `XDG_DATA_HOME/peft-studio` or
/// `~/.local/share/peft-studio`): models, runs, adapters, caches.
pub fn studio_home() -> PathBuf {
    peft_studio_engine::library::studio_home()
}

/// The catalog at `path`, created with its folder on first use.
pub fn open_catalog_at(path: &std::path::Path) -> Result<catalog::Catalog> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AppError::io(dir, e))?;
    }
    Ok(catalog::Catalog::open(path)?)
}
