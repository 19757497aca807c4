//! The model library, shared with the CLI through `models.json` in the studio home: list,
//! import a folder or GGUF file, download from the hub, with progress over a channel.

use std::path::{Path, PathBuf};

use peft_studio_engine::library::hub::{self, DownloadProgress};
use peft_studio_engine::library::import::{default_name, describe_folder, import_gguf};
use peft_studio_engine::library::{studio_home, ModelEntry, Registry};
use peft_studio_engine::model::gguf::GgufWeights;
use serde::Serialize;
use tauri::ipc::Channel;

use crate::error::{blocking, CommandResult};

/// The installed models; errors come back as the message the UI shows.
#[tauri::command]
pub fn list_models() -> Result<Vec<ModelEntry>, String> {
    Registry::open(&studio_home())
        .map(|r| r.models().to_vec())
        .map_err(|e| e.to_string())
}

/// Progress of an import or download.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// What is being done (`dequantising`, or the file being downloaded).
    pub stage: String,
    /// Units done.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
}

/// The name asked for, or the default one for `source`.
fn name_or_default(name: Option<String>, source: &Path) -> String {
    name.filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| default_name(source))
}

fn install(entry: ModelEntry) -> CommandResult<ModelEntry> {
    let mut registry = Registry::open(&studio_home())?;
    registry.put(entry.clone())?;
    Ok(entry)
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
        let name = name_or_default(name, &path);
        let entry = if path.is_file() {
            let weights = GgufWeights::AsStored;
            import_gguf(&path, &studio_home(), &name, weights, &mut |done, total| {
                let _ = on_progress.send(Progress {
                    stage: "reading tensors".into(),
                    done: done as u64,
                    total: total as u64,
                });
            })?
        } else {
            describe_folder(&path, &name, "folder")?
        };
        install(entry)
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
        let name = name_or_default(name, Path::new(&repo));
        let mut progress = ChannelProgress {
            channel: on_progress,
            current: Progress {
                stage: String::new(),
                done: 0,
                total: 0,
            },
        };
        let snapshot = hub::download(&repo, "main", &mut progress)?;
        install(describe_folder(
            &snapshot,
            &name,
            &format!("hub:{repo}@main"),
        )?)
    })
    .await
}
