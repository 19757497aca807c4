//! SHA-256 of files, read in blocks (datasets and adapters can be gigabytes).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// Feeds the content of `path` to `hasher`; returns its size in bytes.
pub fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<u64> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            return Ok(size);
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
}

/// SHA-256 (hex) and size of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = hash_file(&mut hasher, path)?;
    Ok((format!("{:x}", hasher.finalize()), size))
}
