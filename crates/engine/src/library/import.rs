//! Adding models to the library: a local Hugging Face folder (checked, used in place) or a
//! GGUF file (converted into a Hugging Face folder in the studio's home).

use std::path::{Path, PathBuf};

use super::weights::check_folder;
use super::{check_name, ModelEntry};
use crate::error::{EngineError, Result};
use crate::model::gguf::{GgufModel, GgufWeights};

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a Hugging Face folder and describes it as a library entry.
pub fn describe_folder(dir: &Path, name: &str, source: &str) -> Result<ModelEntry> {
    check_name(name)?;
    if crate::model::t5::is_t5(dir) {
        return describe_t5(dir, name, source);
    }
    let summary = check_folder(dir)?;
    let path = dir.canonicalize().map_err(|e| EngineError::io(dir, e))?;
    Ok(ModelEntry {
        name: name.to_string(),
        path,
        source: source.to_string(),
        architecture: summary.config.checkpoint_architecture().to_string(),
        family: String::new(),
        encoder_decoder: false,
        parameters: summary.parameters,
        dtype: summary.dtype,
        context_length: summary.config.max_position_embeddings,
        size_bytes: summary.size_bytes,
        added_unix: now_unix(),
    }
    .derive())
}

/// A T5 folder, checked without loading a weight, as a library entry.
fn describe_t5(dir: &Path, name: &str, source: &str) -> Result<ModelEntry> {
    let summary = super::weights::check_t5_folder(dir)?;
    let path = dir.canonicalize().map_err(|e| EngineError::io(dir, e))?;
    Ok(ModelEntry {
        name: name.to_string(),
        path,
        source: source.to_string(),
        architecture: crate::model::t5::ARCHITECTURE.into(),
        family: String::new(),
        encoder_decoder: false,
        parameters: summary.parameters,
        dtype: summary.dtype.to_lowercase(),
        // Relative positions have no limit; T5 was trained on 512 tokens.
        context_length: 512,
        size_bytes: summary.size_bytes,
        added_unix: now_unix(),
    }
    .derive())
}

/// The default library name of a GGUF file, folder or hub repository: its last path part
/// without `.gguf`, e.g. `Qwen/Qwen2.5-0.5B` gives `Qwen2.5-0.5B`.
pub fn default_name(path: &Path) -> String {
    let last = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let last = last.strip_suffix(".gguf").unwrap_or(&last);
    last.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Converts a GGUF file into `<home>/models/<name>/` and describes it. The folder is written
/// under a temporary name and renamed when complete, so a failure leaves nothing behind.
pub fn import_gguf(
    file: &Path,
    home: &Path,
    name: &str,
    weights: GgufWeights,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ModelEntry> {
    check_name(name)?;
    let model = GgufModel::open(file)?;
    let models = home.join("models");
    let target = models.join(name);
    let partial: PathBuf = models.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    let written = model
        .write_hf_folder(&partial, weights, progress)
        .and_then(|()| {
            if target.exists() {
                std::fs::remove_dir_all(&target).map_err(|e| EngineError::io(&target, e))?;
            }
            std::fs::rename(&partial, &target).map_err(|e| EngineError::io(&target, e))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    describe_folder(&target, name, &format!("gguf:{}", file.display()))
}
