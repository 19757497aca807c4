//! Resumable checkpoints: trained tensors, optimiser moments and the step counters. Data
//! order and dropout derive from (seed, step), so nothing else is needed for exact resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::fsutil::{write_atomic, write_safetensors_streaming};
use crate::model::load::read_safetensors;

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps completed.
    pub step: usize,
    /// Input tokens seen so far.
    pub tokens_seen: u64,
    /// The run's seed (checked on resume).
    pub seed: u64,
    /// Last training loss.
    pub last_loss: Option<f64>,
}

/// The contents of a checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Counters.
    pub state: CheckpointState,
    /// Trained tensors by name.
    pub params: HashMap<String, Tensor>,
    /// First moments by parameter name.
    pub m: HashMap<String, Tensor>,
    /// Second moments by parameter name.
    pub v: HashMap<String, Tensor>,
}

/// The folder name of the checkpoint after `step`.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint folder under `root` atomically (a temporary folder renamed into place).
pub fn save(
    root: &Path,
    state: &CheckpointState,
    params: &[(String, Tensor)],
    m: &[Tensor],
    v: &[Tensor],
) -> Result<PathBuf> {
    let final_dir = root.join(checkpoint_name(state.step));
    let tmp = root.join(format!(".{}.tmp", checkpoint_name(state.step)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    }
    let moments: Vec<(String, Tensor)> = params
        .iter()
        .zip(m.iter().zip(v))
        .flat_map(|((n, _), (m, v))| [(format!("m.{n}"), m.clone()), (format!("v.{n}"), v.clone())])
        .collect();
    // Streamed tensor by tensor (in f32, as the optimiser keeps them): a whole file in
    // memory would be as large again as the moments, the run's peak for full fine-tuning.
    let stream = |name: &str, tensors: &[(String, Tensor)]| {
        let shapes: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        write_safetensors_streaming(&tmp.join(name), &shapes, |i| Ok(tensors[i].1.clone()))
    };
    stream("params.safetensors", params)?;
    stream("optimizer.safetensors", &moments)?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| EngineError::config("checkpoint", e.to_string()))?;
    write_atomic(&tmp.join("state.json"), &json)?;
    // A checkpoint of this step from before a resume is moved aside first, so that a crash at
    // any moment leaves either it or the new one complete under the visible name.
    let old = final_dir.exists().then(|| hide(&final_dir)).transpose()?;
    std::fs::rename(&tmp, &final_dir).map_err(|e| EngineError::io(&final_dir, e))?;
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).map_err(|e| EngineError::io(&old, e))?;
    }
    Ok(final_dir)
}

/// Renames a checkpoint folder to a hidden name (which `list` never returns) before it is
/// deleted: deleting files one by one under the visible name would show a half-deleted,
/// unloadable checkpoint if the process died part-way.
fn hide(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hidden = dir.with_file_name(format!(".{name}.old"));
    if hidden.exists() {
        std::fs::remove_dir_all(&hidden).map_err(|e| EngineError::io(&hidden, e))?;
    }
    std::fs::rename(dir, &hidden).map_err(|e| EngineError::io(dir, e))?;
    Ok(hidden)
}

/// Reads a checkpoint folder; a missing or damaged file is an error naming it.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| EngineError::io(&state_path, e))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| {
        EngineError::bad_file(&state_path, format!("damaged checkpoint state: {e}"))
    })?;
    let params = read_safetensors(&dir.join("params.safetensors"))?;
    let moments = read_safetensors(&dir.join("optimizer.safetensors"))?;
    let (mut m, mut v) = (HashMap::new(), HashMap::new());
    for (k, t) in moments {
        if let Some(n) = k.strip_prefix("m.") {
            m.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix("v.") {
            v.insert(n.to_string(), t);
        }
    }
    Ok(Checkpoint {
        state,
        params,
        m,
        v,
    })
}

/// Complete checkpoint folders under `root` (named `step-N`, holding `state.json`, which is
/// written last), oldest first.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes all but the newest `keep` checkpoints (0 keeps all).
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list(root);
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep)) {
        let hidden = hide(dir)?;
        std::fs::remove_dir_all(&hidden).map_err(|e| EngineError::io(&hidden, e))?;
    }
    Ok(())
}
