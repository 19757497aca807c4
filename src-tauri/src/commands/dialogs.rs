//! Native file dialogs, opened by the studio rather than by the page: what the user picks is
//! recorded in [`Chosen`], the only way a path outside the studio's own folders becomes one
//! the commands accept (the page holds no dialog permission of its own).

use std::path::PathBuf;

use serde::Deserialize;
use tauri::{AppHandle, Manager, Runtime};
use tauri_plugin_dialog::DialogExt;

use crate::error::{blocking, CommandResult};
use crate::paths::Chosen;

/// A file-type filter of the dialog.
#[derive(Debug, Deserialize)]
pub struct Filter {
    /// What the files are ("Datasets").
    pub name: String,
    /// Their extensions, without the dot.
    pub extensions: Vec<String>,
}

/// What to ask the user for.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ChooseOptions {
    /// A folder instead of a file.
    pub directory: bool,
    /// A destination to write (a save dialog) instead of something to open.
    pub save: bool,
    /// File-type filters.
    pub filters: Vec<Filter>,
    /// Where the dialog opens: the typed path, its folder, or nothing.
    pub default_path: Option<PathBuf>,
}

/// Asks the user for a path in a native dialog; the pick is granted and returned, `None` when
/// the dialog was cancelled.
#[tauri::command]
pub async fn choose_path<R: Runtime>(
    app: AppHandle<R>,
    options: ChooseOptions,
) -> CommandResult<Option<PathBuf>> {
    let dialogs = app.clone();
    let picked = blocking(move || Ok(pick(&dialogs, &options))).await?;
    if let Some(path) = &picked {
        app.state::<Chosen>().grant(path.clone());
    }
    Ok(picked)
}

/// Shows the dialog `options` describe and waits for it (off the main thread).
fn pick<R: Runtime>(app: &AppHandle<R>, options: &ChooseOptions) -> Option<PathBuf> {
    let mut dialog = app.dialog().file();
    for filter in &options.filters {
        let extensions: Vec<&str> = filter.extensions.iter().map(String::as_str).collect();
        dialog = dialog.add_filter(&filter.name, &extensions);
    }
    if let Some(start) = &options.default_path {
        if start.is_dir() {
            dialog = dialog.set_directory(start);
        } else {
            if let Some(folder) = start.parent().filter(|p| p.is_dir()) {
                dialog = dialog.set_directory(folder);
            }
            if let Some(name) = start.file_name() {
                dialog = dialog.set_file_name(name.to_string_lossy());
            }
        }
    }
    let picked = if options.save {
        dialog.blocking_save_file()
    } else if options.directory {
        dialog.blocking_pick_folder()
    } else {
        dialog.blocking_pick_file()
    };
    picked.and_then(|p| p.into_path().ok())
}
