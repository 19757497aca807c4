//! Crash-safe file writing: a file is either the old one or the complete new one.

use std::io::Write;
use std::path::Path;

use crate::error::{EngineError, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder, fsyncs it and
/// renames it into place, so that a crash or a full disk never leaves a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        EngineError::io(path, e)
    })
}

/// Serialises named tensors as safetensors (F32/F16/BF16 as stored) with `metadata`.
pub fn safetensors_bytes(
    tensors: &[(String, candle_core::Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, candle_core::Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.to_device(&candle_core::Device::Cpu)?.contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| EngineError::config("safetensors", e.to_string()))
}
