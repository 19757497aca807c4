//! What the window shows about the build.

use serde::Serialize;

/// Name and version of the studio.
#[derive(Debug, Serialize, PartialEq)]
pub struct AppInfo {
    /// Product name.
    pub name: String,
    /// Semantic version.
    pub version: String,
}

/// Returns the studio's name and version.
#[tauri::command]
pub fn app_info() -> AppInfo {
    AppInfo {
        name: "PEFT Studio".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}
