//! Loading a model from a Hugging Face folder: `config.json` plus `model.safetensors` or
//! shards listed in `model.safetensors.index.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::llama::LlamaModel;
use crate::error::{EngineError, Result};

/// The safetensors files holding a model's weights, in load order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(EngineError::bad_file(
            dir,
            "no weights: expected model.safetensors or model.safetensors.index.json",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::bad_file(&index, e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EngineError::bad_file(&index, "no `weight_map` object"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            if f.contains("..") || f.contains('/') || f.contains('\\') {
                return Err(EngineError::bad_file(
                    &index,
                    format!("shard name `{f}` leaves the model folder"),
                ));
            }
            Ok(dir.join(f))
        })
        .collect()
}

/// Reads every tensor of one safetensors file onto the CPU.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| not_safetensors(path, e))
}

fn not_safetensors(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::bad_file(path, format!("not a valid safetensors file: {e}"))
}

/// The tensors of one safetensors file in `dtype` on `device`, tensor by tensor: the file is
/// mapped, each tensor copied out and converted (and moved to a GPU at once), and the pages
/// it came from released from this process as soon as it is copied. Loading's peak is the
/// weights plus one tensor, not the file's bytes next to the weights.
fn read_safetensors_as(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    use candle_core::safetensors::Load;
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    // SAFETY: the mapping is read-only and private; a file changed on disk while it is read
    // gives wrong weights (as a plain read would), not undefined behaviour in this process's
    // own memory, which never aliases the mapping mutably.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| not_safetensors(path, e))?;
    let base = map.as_ptr() as usize;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = view
                .load(&Device::Cpu)
                .map_err(|e| not_safetensors(path, e))?
                .to_dtype(dtype)?
                .to_device(device)?;
            let data = view.data();
            // SAFETY: DONTNEED on a read-only private file mapping only drops pages from this
            // process; a later read (a neighbouring tensor sharing the page) reloads them.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    data.as_ptr() as usize - base,
                    data.len(),
                )
            };
            Ok((name, t))
        })
        .collect()
}

/// Loads config and weights from a model folder.
pub fn load_model(dir: &Path, dtype: DType, device: &Device) -> Result<LlamaModel> {
    if !dir.is_dir() {
        return Err(EngineError::bad_file(dir, "model folder not found"));
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(EngineError::bad_file(
            &config_path,
            "missing: a model folder needs config.json",
        ));
    }
    let cfg = LlamaConfig::from_path(&config_path)?;
    let files = weight_files(dir)?;
    let mut tensors = HashMap::new();
    for f in &files {
        tensors.extend(read_safetensors_as(f, dtype, device)?);
    }
    let origin = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    LlamaModel::from_tensors(&cfg, tensors, &origin, dtype, device)
}
