//! Typed access to a GGUF file's metadata, and the `config.json` it describes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use crate::error::{EngineError, Result};

/// The GGUF architectures the decoder implements, with the transformers class each becomes.
/// llama.cpp converts Llama 2/3, Mistral, SmolLM and TinyLlama all to `llama`.
pub const GGUF_ARCHITECTURES: &[(&str, &str)] = &[
    ("llama", "LlamaForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
    ("gemma2", "Gemma2ForCausalLM"),
    ("gemma3", "Gemma3ForCausalLM"),
    ("phi3", "Phi3ForCausalLM"),
];

/// A GGUF file's metadata, with errors that name the file and the key.
pub struct Metadata<'a> {
    path: PathBuf,
    values: &'a HashMap<String, Value>,
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(f64::from(*x)),
        Value::F64(x) => Some(*x),
        other => as_u64(other).map(|x| x as f64),
    }
}

impl<'a> Metadata<'a> {
    /// Wraps the metadata read from `path`.
    pub fn new(path: &Path, values: &'a HashMap<String, Value>) -> Self {
        Self {
            path: path.to_path_buf(),
            values,
        }
    }

    /// An error about this file.
    pub fn file_error(&self, message: String) -> EngineError {
        EngineError::bad_file(&self.path, message)
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.file_error(format!("metadata `{key}` is not a string"))),
        }
    }

    /// A non-negative integer value.
    pub fn uint(&self, key: &str) -> Result<Option<u64>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v).map(Some).ok_or_else(|| {
                self.file_error(format!("metadata `{key}` is not a non-negative integer"))
            }),
        }
    }

    /// A required positive count that fits comfortably in memory sizes.
    pub fn count(&self, key: &str) -> Result<usize> {
        let v = self
            .uint(key)?
            .ok_or_else(|| self.file_error(format!("metadata `{key}` is missing")))?;
        if v == 0 || v > 1 << 24 {
            return Err(self.file_error(format!("metadata `{key}` = {v} is out of range")));
        }
        Ok(v as usize)
    }

    /// An optional positive count (see [`Metadata::count`]).
    pub fn optional_count(&self, key: &str) -> Result<Option<usize>> {
        match self.values.contains_key(key) {
            true => self.count(key).map(Some),
            false => Ok(None),
        }
    }

    /// A floating-point value.
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => as_f64(v)
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.file_error(format!("metadata `{key}` is not a finite number"))),
        }
    }

    /// A boolean value.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.file_error(format!("metadata `{key}` is not a boolean"))),
        }
    }

    /// An array whose every element `convert` accepts; `what` names the element kind.
    fn array<T>(
        &self,
        key: &str,
        what: &str,
        convert: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    convert(v).ok_or_else(|| {
                        self.file_error(format!("metadata `{key}` holds a non-{what}"))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.file_error(format!("metadata `{key}` is not an array"))),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.array(key, "string", |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.array(key, "integer", |v| match v {
            Value::I32(x) => Some(i64::from(*x)),
            Value::I64(x) => Some(*x),
            other => as_u64(other).map(|x| x as i64),
        })
    }

    /// An array of numbers.
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.array(key, "number", as_f64)
    }

    /// `general.architecture`, checked against the ones the decoder implements.
    pub fn architecture(&self) -> Result<(String, &'static str)> {
        let arch = self
            .string("general.architecture")?
            .ok_or_else(|| self.file_error("metadata `general.architecture` is missing".into()))?;
        GGUF_ARCHITECTURES
            .iter()
            .find(|(a, _)| *a == arch)
            .map(|(a, class)| (a.to_string(), *class))
            .ok_or_else(|| {
                let names: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|(a, _)| *a).collect();
                self.file_error(format!(
                    "architecture `{arch}` is not supported; supported: {}",
                    names.join(", ")
                ))
            })
    }

    /// The transformers `config.json` this file's hyper-parameters describe.
    /// `tied` says whether the file has no separate `output.weight`.
    pub fn config_json(&self, tied: bool) -> Result<serde_json::Value> {
        let (arch, class) = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = self.count(&key("embedding_length"))?;
        let heads = self.count(&key("attention.head_count"))?;
        let kv_heads = self
            .optional_count(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        let head_dim = self
            .optional_count(&key("attention.key_length"))?
            .unwrap_or(hidden / heads);
        let vocab = match self.optional_count(&key("vocab_size"))? {
            Some(v) => v,
            None => self
                .strings("tokenizer.ggml.tokens")?
                .map(|t| t.len())
                .ok_or_else(|| {
                    self.file_error(format!("metadata `{arch}.vocab_size` is missing"))
                })?,
        };
        let family = crate::model::family::family(class)
            .ok_or_else(|| self.file_error(format!("architecture `{arch}` has no family")))?;
        let mut cfg = json!({
            "architectures": [class],
            "model_type": family.model_type,
            "hidden_size": hidden,
            "intermediate_size": self.count(&key("feed_forward_length"))?,
            "num_hidden_layers": self.count(&key("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "vocab_size": vocab,
            "hidden_act": "silu",
            "max_position_embeddings": self.uint(&key("context_length"))?.unwrap_or(4096),
            "rms_norm_eps": self.float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            "rope_theta": self.float(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            "tie_word_embeddings": tied,
            "torch_dtype": "float32",
        });
        if arch == "qwen2" {
            cfg["attention_bias"] = json!(true);
        }
        // Where llama.cpp stores a window (Gemma, Phi-3); the family says which layers slide.
        if let Some(w) = self.uint(&key("attention.sliding_window"))? {
            cfg["sliding_window"] = json!(w);
        }
        if arch == "gemma2" || arch == "gemma3" {
            // llama.cpp's Gemmas: tanh-GELU, scores scaled by `key_length^-½` (its
            // `f_attention_scale` for every size but 27B).
            cfg["hidden_act"] = json!(null);
            cfg["hidden_activation"] = json!("gelu_pytorch_tanh");
            cfg["query_pre_attn_scalar"] = json!(head_dim);
        }
        if arch == "phi3" {
            // The rotated part of each head, LongRoPE's pretraining context (its factors are
            // tensors, read by `GgufModel::open`).
            if let Some(rd) = self.optional_count(&key("rope.dimension_count"))? {
                cfg["partial_rotary_factor"] = json!(rd as f64 / head_dim as f64);
            }
            if let Some(o) = self.uint(&key("rope.scaling.original_context_length"))? {
                cfg["original_max_position_embeddings"] = json!(o);
            }
        }
        if arch == "gemma2" {
            // Every other layer sliding (the family's rule); the caps as stored, none if absent.
            for (field, k) in [
                ("attn_logit_softcapping", "attn_logit_softcapping"),
                ("final_logit_softcapping", "final_logit_softcapping"),
            ] {
                cfg[field] = json!(self.float(&key(k))?);
            }
        }
        if arch == "gemma3" {
            // Every 6th layer global, the local layers' rotary base 10,000.
            cfg["rope_local_base_freq"] = json!(10_000.0);
        }
        // Linear and YaRN scaling as llama.cpp stores them (of Gemma 3's global layers only).
        let factor = self.float(&key("rope.scaling.factor"))?;
        match (self.string(&key("rope.scaling.type"))?.as_deref(), factor) {
            (Some("linear"), Some(factor)) => {
                cfg["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
            }
            (Some("yarn"), Some(factor)) => {
                let original = self.uint(&key("rope.scaling.original_context_length"))?;
                cfg["rope_scaling"] = json!({"rope_type": "yarn", "factor": factor,
                    "original_max_position_embeddings": original});
            }
            (Some(kind @ ("linear" | "yarn")), None) => {
                return Err(self.file_error(format!(
                "`{arch}.rope.scaling.type` is {kind} but `{arch}.rope.scaling.factor` is missing"
            )))
            }
            _ => {}
        }
        for (name, k) in [
            ("bos_token_id", "tokenizer.ggml.bos_token_id"),
            ("eos_token_id", "tokenizer.ggml.eos_token_id"),
            ("pad_token_id", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = self.uint(k)? {
                cfg[name] = json!(id);
            }
        }
        // Gemma ends a chat turn with `<end_of_turn>`, which its generation_config.json lists
        // as an end token beside `<eos>`; the GGUF keeps one id.
        let end_of_turn = (arch == "gemma2" || arch == "gemma3")
            .then(|| self.strings("tokenizer.ggml.tokens"))
            .transpose()?
            .flatten()
            .and_then(|t| t.iter().position(|t| t == "<end_of_turn>"));
        if let (Some(turn), Some(eos)) = (end_of_turn, cfg["eos_token_id"].as_u64()) {
            cfg["eos_token_id"] = json!([eos, turn]);
        }
        Ok(cfg)
    }
}
