//! A cache of tokenized datasets, keyed by the dataset's content, the tokenizer and chat
//! template, and the data settings, so a second run on the same data starts at once.
//! A missing or damaged cache entry is simply a miss.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::batch::Example;
use super::config::{DataConfig, DataReport};
use crate::error::{EngineError, Result};
use crate::fsutil::write_atomic;
use crate::tokenizer::TextTokenizer;

const MAGIC: &[u8; 8] = b"PSTOK002";

/// The folder of cached tokenizations.
pub struct TokenCache {
    dir: PathBuf,
}

impl TokenCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The key of (dataset content, tokenizer and template, settings).
    pub fn key(dataset: &Path, tok: &TextTokenizer, cfg: &DataConfig) -> Result<String> {
        let mut hasher = Sha256::new();
        crate::hash::hash_file(&mut hasher, dataset)?;
        hasher.update(tok.fingerprint().as_bytes());
        // Only what changes the tokens or the report; stop/skip is decided after the cache.
        let settings =
            serde_json::to_string(&(cfg.format, &cfg.columns, cfg.train_on, cfg.decoder_start))
                .map_err(|e| EngineError::config("data", e.to_string()))?;
        hasher.update(settings.as_bytes());
        // The report names the file, so the path is part of the key too.
        hasher.update(dataset.to_string_lossy().as_bytes());
        Ok(format!("{:x}", hasher.finalize()))
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.tokens")),
            self.dir.join(format!("{key}.report.json")),
        )
    }

    /// The cached examples and report, if present and intact.
    pub fn get(&self, key: &str) -> Option<(Vec<Example>, DataReport)> {
        let (tokens, report) = self.paths(key);
        let report: DataReport = serde_json::from_slice(&std::fs::read(report).ok()?).ok()?;
        let bytes = std::fs::read(tokens).ok()?;
        let mut at = bytes.strip_prefix(MAGIC)?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, rest) = (at.get(..n)?, at.get(n..)?);
            at = rest;
            Some(head)
        };
        let count = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
        let mut examples = Vec::with_capacity(count.min(1 << 24));
        for _ in 0..count {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let ids = take(len.checked_mul(4)?)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let loss_mask = take(len)?.to_vec();
            let source_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let source = take(source_len.checked_mul(4)?)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            examples.push(Example {
                ids,
                loss_mask,
                source,
            });
        }
        Some((examples, report))
    }

    /// Stores examples and report under `key` (atomically, file by file).
    pub fn put(&self, key: &str, examples: &[Example], report: &DataReport) -> Result<()> {
        let (tokens, report_path) = self.paths(key);
        let total: usize = examples
            .iter()
            .map(|e| 8 + e.ids.len() * 5 + e.source.len() * 4)
            .sum();
        let mut bytes = Vec::with_capacity(16 + total);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(examples.len() as u64).to_le_bytes());
        for e in examples {
            bytes.extend_from_slice(&(e.ids.len() as u32).to_le_bytes());
            for id in &e.ids {
                bytes.extend_from_slice(&id.to_le_bytes());
            }
            bytes.extend_from_slice(&e.loss_mask);
            bytes.extend_from_slice(&(e.source.len() as u32).to_le_bytes());
            for id in &e.source {
                bytes.extend_from_slice(&id.to_le_bytes());
            }
        }
        write_atomic(&tokens, &bytes)?;
        let json =
            serde_json::to_vec(report).map_err(|e| EngineError::config("data", e.to_string()))?;
        write_atomic(&report_path, &json)
    }
}
