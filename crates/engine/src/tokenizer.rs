//! The model's tokenizer (`tokenizer.json`) and the settings in `tokenizer_config.json`.

use std::path::Path;

use crate::error::{EngineError, Result};

/// A Hugging Face tokenizer plus the end-of-sequence tokens generation stops at.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional) from `dir`.
    /// `extra_eos` are end tokens from config.json.
    pub fn load(dir: &Path, extra_eos: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::bad_file(
                &path,
                "missing: the model folder needs tokenizer.json",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| EngineError::bad_file(&path, format!("not a valid tokenizer: {e}")))?;
        let mut eos_ids = extra_eos.to_vec();
        let mut bos_id = None;
        let mut chat_template = None;
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
            let cfg: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::bad_file(&cfg_path, e.to_string()))?;
            if let Some(id) = token_text(cfg.get("eos_token")).and_then(|t| inner.token_to_id(&t)) {
                eos_ids.push(id);
            }
            if cfg
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
            {
                bos_id = token_text(cfg.get("bos_token")).and_then(|t| inner.token_to_id(&t));
            }
            chat_template = cfg
                .get("chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner,
            eos_ids,
            bos_id,
            chat_template,
        })
    }

    /// Token ids of `text`, without special tokens added by the post-processor; a BOS
    /// token is prepended when tokenizer_config.json asks for one and `add_bos` is set.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// The tokens that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The Jinja chat template, when the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
