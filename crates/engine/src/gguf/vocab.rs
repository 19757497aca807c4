//! A model folder's tokenizer as GGUF `tokenizer.ggml.*` metadata, as llama.cpp's converter
//! writes it for byte-level BPE (GPT-2 style) tokenizers — the inverse of
//! `model::gguf::vocab`, so a model exported to GGUF and imported back tokenizes the same.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use crate::error::{EngineError, Result};

/// llama.cpp token types (`gguf.TokenType`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EngineError::bad_file(path, e.to_string()))
}

/// Whether a pre-tokenizer (or any step of a `Sequence`) is the byte-level one.
fn has_byte_level(pre: &Json) -> bool {
    pre["type"] == "ByteLevel"
        || pre["pretokenizers"]
            .as_array()
            .is_some_and(|steps| steps.iter().any(has_byte_level))
}

/// `tokenizer.ggml.pre`: the llama.cpp pre-tokenizer whose split pattern the tokenizer uses.
fn pre_tokenizer_name(pre: &Json) -> &'static str {
    let text = pre.to_string();
    if text.contains(r"\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains("Digits") {
        "smollm"
    } else if text.contains(r"|\\p{N}|") {
        "qwen2"
    } else {
        "gpt-2"
    }
}

/// A merge as GGUF stores it: the two parts joined by a space.
fn merge_text(m: &Json) -> Option<String> {
    match m {
        Json::String(s) => Some(s.clone()),
        Json::Array(parts) => match parts.as_slice() {
            [Json::String(a), Json::String(b)] => Some(format!("{a} {b}")),
            _ => None,
        },
        _ => None,
    }
}

/// The id of a special token given in tokenizer_config.json (a string or `{content}`).
fn special_id(value: &Json, ids: &HashMap<String, u32>) -> Option<u32> {
    let text = value.as_str().or_else(|| value["content"].as_str())?;
    ids.get(text).copied()
}

/// The `tokenizer.*` metadata for the model folder `dir` with `vocab_size` rows of
/// embeddings (ids the tokenizer does not use are written as unused padding tokens).
pub fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    // A model used as its GGUF file says it all already: its `tokenizer.*` keys are copied,
    // whatever the tokenizer (SentencePiece too), exactly as llama.cpp wrote them.
    let stored = dir.join(crate::model::load::GGUF_WEIGHTS);
    if stored.is_file() {
        let mut file = std::fs::File::open(&stored).map_err(|e| EngineError::io(&stored, e))?;
        let content = crate::model::gguf::read_content(&stored, &mut file)?;
        let mut keys: Vec<(String, Value)> = content
            .metadata
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(keys);
    }
    let tok_path = dir.join("tokenizer.json");
    let tok = read_json(&tok_path)?;
    let model = &tok["model"];
    if model["type"] != "BPE" || !has_byte_level(&tok["pre_tokenizer"]) {
        return Err(EngineError::bad_file(
            &tok_path,
            "only byte-level BPE tokenizers (GPT-2 style: SmolLM, Llama 3, Qwen2) can be written to GGUF here; this one is not",
        ));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| EngineError::bad_file(&tok_path, "model.vocab is not an object"))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut ids = HashMap::new();
    let mut place = |id: u64, text: &str, kind: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            EngineError::bad_file(
                &tok_path,
                format!("token `{text}` has id {id}, beyond the model's {vocab_size} embeddings"),
            )
        })?;
        *slot = Some((text.to_string(), kind));
        ids.insert(text.to_string(), id as u32);
        Ok(())
    };
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| EngineError::bad_file(&tok_path, format!("token `{text}` has no id")))?;
        place(id, text, NORMAL)?;
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) {
            let kind = if added["special"] == true {
                CONTROL
            } else {
                USER_DEFINED
            };
            place(id, text, kind)?;
        }
    }
    let (texts, kinds): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (text, kind) = t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
            (Value::String(text), Value::I32(kind))
        })
        .unzip();
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            merge_text(m).map(Value::String).ok_or_else(|| {
                EngineError::bad_file(&tok_path, format!("merge {m} is neither `a b` nor [a, b]"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String(pre_tokenizer_name(&tok["pre_tokenizer"]).into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(texts)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(kinds)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        read_json(&cfg_path)?
    } else {
        Json::Null
    };
    for (field, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(id) = special_id(&cfg[field], &ids) {
            meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    for field in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = cfg[field].as_bool() {
            meta.push((format!("tokenizer.ggml.{field}"), Value::Bool(b)));
        }
    }
    let template_file = dir.join("chat_template.jinja");
    let template = match cfg["chat_template"].as_str() {
        Some(t) => Some(t.to_string()),
        None if template_file.is_file() => Some(
            std::fs::read_to_string(&template_file)
                .map_err(|e| EngineError::io(&template_file, e))?,
        ),
        None => None,
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(meta)
}
