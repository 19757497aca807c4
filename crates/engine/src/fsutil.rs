//! Crash-safe file writing: a file is either the old one or the complete new one.

use std::io::Write;
use std::path::Path;

use crate::error::{EngineError, Result};

/// Writes `path` through a temporary file in the same folder: `fill` writes the content,
/// which is then fsynced and renamed into place, so that a crash or a full disk never leaves
/// a half-written file. A failed write removes the temporary file.
fn write_via_temp(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_stale_temps(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| EngineError::io(path, e))?;
        fill(&mut f)?;
        f.sync_all().map_err(|e| EngineError::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the temporary files that writers of `dir/name` killed mid-write left (a process
/// that is gone cannot rename or remove its own). Where processes cannot be looked up (no
/// `/proc`), nothing is removed.
fn remove_stale_temps(dir: &Path, name: &str) {
    let proc = Path::new("/proc");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if !proc.is_dir() {
        return;
    }
    let prefix = format!(".{name}.tmp-");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let pid = file.to_str().and_then(|f| f.strip_prefix(&prefix));
        if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok()) {
            if !proc.join(pid).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes `bytes` to `path` atomically (see [`write_via_temp`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, |f| {
        f.write_all(bytes).map_err(|e| EngineError::io(path, e))
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

/// Writes an F32 safetensors file (with `format=pt`) whose tensors are produced one at a time
/// by `tensor(index)` in the order of `shapes`, so only one is in memory; atomically like
/// [`write_atomic`].
pub fn write_safetensors_streaming(
    path: &Path,
    shapes: &[(String, Vec<usize>)],
    mut tensor: impl FnMut(usize) -> Result<candle_core::Tensor>,
) -> Result<()> {
    use std::io::{BufWriter, Seek};
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape) in shapes {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&header)
        .map_err(|e| EngineError::config("safetensors", e.to_string()))?;
    // The data must start 8-byte aligned; the format pads the header with spaces.
    text.resize(text.len().div_ceil(8) * 8, b' ');
    write_via_temp(path, |file| {
        let io = |e| EngineError::io(path, e);
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&text).map_err(io)?;
        for (index, (name, shape)) in shapes.iter().enumerate() {
            let t = tensor(index)?.to_dtype(candle_core::DType::F32)?;
            if t.dims() != shape.as_slice() {
                return Err(EngineError::config(
                    "safetensors",
                    format!(
                        "tensor `{name}` has shape {:?}, announced {shape:?}",
                        t.dims()
                    ),
                ));
            }
            let mut values = t.flatten_all()?.to_vec1::<f32>()?;
            if cfg!(target_endian = "big") {
                values
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
            }
            out.write_all(bytemuck::cast_slice(&values)).map_err(io)?;
        }
        let file = out
            .into_inner()
            .map_err(|e| EngineError::io(path, e.into_error()))?;
        let end = file.stream_position().map_err(io)?;
        if end != 8 + text.len() as u64 + offset as u64 {
            return Err(EngineError::config(
                "safetensors",
                "written size differs from the header",
            ));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::write_atomic;

    /// A writer killed mid-write leaves `.name.tmp-<pid>`; the next write of that file removes
    /// it, and leaves a live writer's (pid 1 always runs) and other files' alone.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_killed_writers_temporary_file_goes_with_the_next_write() -> crate::error::Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::error::EngineError::io("tempdir", e))?;
        let d = dir.path();
        let put = |name: &str| std::fs::write(d.join(name), b"half").map(|_| d.join(name));
        let dead = put(".a.safetensors.tmp-4294967295")
            .map_err(|e| crate::error::EngineError::io(d, e))?;
        let live = put(".a.safetensors.tmp-1").map_err(|e| crate::error::EngineError::io(d, e))?;
        let other = put(".b.safetensors.tmp-4294967295")
            .map_err(|e| crate::error::EngineError::io(d, e))?;
        write_atomic(&d.join("a.safetensors"), b"whole")?;
        assert!(!dead.exists(), "a dead writer's file stays");
        assert!(
            live.exists() && other.exists(),
            "a live writer's or another file's went"
        );
        assert_eq!(
            std::fs::read(d.join("a.safetensors")).ok().as_deref(),
            Some(&b"whole"[..])
        );
        Ok(())
    }
}
