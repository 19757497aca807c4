//! The model library, shared with the CLI through `models.json` in the studio home: list,
//! import a folder or GGUF file, download from the hub, with progress over a channel.

use std::path::PathBuf;

use peft_studio_app::models::{self, DownloadProgress, ModelEntry};
use serde::Serialize;
use tauri::ipc::Channel;

use crate::error::{blocking, CommandResult};

/// The installed models; errors come back as the message the UI shows.
#[tauri::command]
pub fn list_models() -> Result<Vec<ModelEntry>, String> {
    models::list().map_err(|e| e.to_string())
}

/// Progress of an import or download.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// What is being done (`reading tensors`, or the file being downloaded).
    pub stage: String,
    /// Units done.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
}

/// Installs a Hugging Face folder or a GGUF file, both used in place (a GGUF base trains
/// with the types it stores), under `name` (default: the file or folder name).
#[tauri::command]
pub async fn import_model(
    path: PathBuf,
    name: Option<String>,
    on_progress: Channel<Progress>,
    chosen: tauri::State<'_, crate::paths::Chosen>,
) -> CommandResult<ModelEntry> {
    let path = crate::paths::read_source(&path, crate::paths::MODEL, &chosen)?;
    blocking(move || {
        let mut on_tensors = |done: usize, total: usize| {
            let _ = on_progress.send(Progress {
                stage: "reading tensors".into(),
                done: done as u64,
                total: total as u64,
            });
        };
        Ok(models::import(&path, name, false, &mut on_tensors)?)
    })
    .await
}

struct ChannelProgress {
    channel: Channel<Progress>,
    current: Progress,
}

impl DownloadProgress for ChannelProgress {
    fn file(&mut self, name: &str, size: usize) {
        self.current = Progress {
            stage: name.to_string(),
            done: 0,
            total: size as u64,
        };
        let _ = self.channel.send(self.current.clone());
    }
    fn advance(&mut self, bytes: usize) {
        self.current.done += bytes as u64;
        let _ = self.channel.send(self.current.clone());
    }
}

/// Downloads `repo` from the hub (HF_HOME, HF_ENDPOINT, HF_TOKEN apply) and installs it.
#[tauri::command]
pub async fn download_model(
    repo: String,
    name: Option<String>,
    on_progress: Channel<Progress>,
) -> CommandResult<ModelEntry> {
    blocking(move || {
        let mut progress = ChannelProgress {
            channel: on_progress,
            current: Progress {
                stage: String::new(),
                done: 0,
                total: 0,
            },
        };
        Ok(models::download(&repo, "main", name, &mut progress)?)
    })
    .await
}
