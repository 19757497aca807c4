//! The model's tokenizer (`tokenizer.json`) and the settings in `tokenizer_config.json`.

use std::path::Path;

use crate::error::{EngineError, Result};

/// Byte range in the text of each token.
pub type Offsets = Vec<(usize, usize)>;

/// A Hugging Face tokenizer plus the end-of-sequence tokens generation stops at.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    bos_token: String,
    eos_token: String,
    chat_template: Option<String>,
    fingerprint: String,
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
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| EngineError::bad_file(&path, format!("not a valid tokenizer: {e}")))?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut hasher, &bytes);
        let mut eos_ids = extra_eos.to_vec();
        let mut bos_id = None;
        let mut chat_template = None;
        let (mut bos_token, mut eos_token) = (String::new(), String::new());
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
            sha2::Digest::update(&mut hasher, text.as_bytes());
            let cfg: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::bad_file(&cfg_path, e.to_string()))?;
            if let Some(text) = token_text(cfg.get("eos_token")) {
                eos_ids.extend(inner.token_to_id(&text));
                eos_token = text;
            }
            bos_token = token_text(cfg.get("bos_token")).unwrap_or_default();
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
        // Chat templates in a separate file (transformers 5 writes chat_template.jinja).
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.is_file() {
            chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| EngineError::io(&jinja, e))?);
        }
        if eos_token.is_empty() {
            if let Some(&id) = eos_ids.first() {
                eos_token = inner.id_to_token(id).unwrap_or_default();
            }
        }
        if let Some(t) = &chat_template {
            sha2::Digest::update(&mut hasher, t.as_bytes());
        }
        let fingerprint = format!("{:x}", sha2::Digest::finalize(hasher));
        Ok(Self {
            inner,
            eos_ids,
            bos_id,
            bos_token,
            eos_token,
            chat_template,
            fingerprint,
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

    /// `text` as the tokenizer's own post-processor frames it (transformers' `tokenizer(text)`):
    /// T5's appends its EOS to a source.
    pub fn encode_framed(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// The token that stands for an empty context (lm-evaluation-harness's prefix token): the
    /// tokenizer's BOS when it names one, else its EOS.
    pub fn prefix_id(&self) -> Option<u32> {
        [&self.bos_token, &self.eos_token]
            .into_iter()
            .filter(|t| !t.is_empty())
            .find_map(|t| self.inner.token_to_id(t))
            .or(self.eos_ids.first().copied())
    }

    /// A hash of the tokenizer files and chat template: equal fingerprints tokenize alike.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The end-of-sequence token's text (what training appends after text and completions).
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The tokens that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The Jinja chat template, when the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template compiled with its special tokens, or ChatML when it has none.
    pub fn compiled_chat_template(&self) -> Result<crate::chat::ChatTemplate> {
        crate::chat::ChatTemplate::new(
            self.chat_template().unwrap_or(crate::chat::CHATML),
            &self.bos_token,
            &self.eos_token,
        )
    }

    /// Token ids of `text` (no BOS added) with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
