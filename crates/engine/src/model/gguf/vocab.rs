//! A Hugging Face `tokenizer.json` rebuilt from a GGUF file's tokenizer metadata, the way
//! transformers' GGUF loader builds it (`integrations/gguf/gguf_tokenizer_mapping.py`), so the
//! studio and transformers give the same token ids.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::meta::Metadata;
use crate::error::Result;

/// llama.cpp token types (`gguf.TokenType`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Pre-tokenizer split patterns by `tokenizer.ggml.pre`; the others use GPT-2's.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_pattern(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "dbrx"
        | "smaug-bpe" | "lfm2" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        "gpt-4o" | "llama4" => Some(GPT4O_SPLIT),
        _ => None,
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are
/// shifted above U+0100 so every byte has a visible character.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0u32..256 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let code = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The tokenizer files a GGUF file describes.
pub struct GgufTokenizer {
    /// The content of `tokenizer.json`.
    pub tokenizer_json: Value,
    /// The content of `tokenizer_config.json`.
    pub tokenizer_config: Value,
}

/// Builds the tokenizer from `tokenizer.ggml.*` metadata.
pub fn tokenizer(meta: &Metadata) -> Result<GgufTokenizer> {
    let path_error = |m: String| meta.file_error(m);
    let kind = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
        path_error("has no tokenizer: metadata `tokenizer.ggml.model` is missing".into())
    })?;
    let tokens = meta
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| path_error("metadata `tokenizer.ggml.tokens` is missing".into()))?;
    let types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    let token_at = |key: &str| -> Result<Option<(u64, String)>> {
        match meta.uint(key)? {
            None => Ok(None),
            Some(id) => tokens
                .get(id as usize)
                .map(|t| Some((id, t.clone())))
                .ok_or_else(|| path_error(format!("metadata `{key}` = {id} is not a token id"))),
        }
    };
    // Gemma's SentencePiece vocabulary takes transformers' `gemma_tokenizer` route
    // (`integrations/gguf/gguf_tokenizer_mapping.py`).
    let arch = meta.string("general.architecture")?.unwrap_or_default();
    let gemma = kind == "llama" && matches!(arch.as_str(), "gemma" | "gemma2" | "gemma3");
    // Phi-3's SentencePiece vocabulary puts its prefix space in a normalizer rather than in
    // `Metaspace` (transformers' `phi3_tokenizer`): it shows on text that starts with a space.
    let phi3 = kind == "llama" && arch == "phi3";
    let bos = token_at("tokenizer.ggml.bos_token_id")?;
    let eos = token_at("tokenizer.ggml.eos_token_id")?;
    let unk = token_at("tokenizer.ggml.unknown_token_id")?;
    let pad = token_at("tokenizer.ggml.padding_token_id")?;
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(kind == "llama");

    let (model, vocab, pre_tokenizer, decoder, byte_level) = match kind.as_str() {
        "gpt2" => {
            let (model, vocab) = byte_level_model(meta, &tokens)?;
            let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or_default();
            let pre_tokenizer = match split_pattern(&pre) {
                Some(pattern) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
                None => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            };
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (model, vocab, pre_tokenizer, decoder, true)
        }
        "llama" if gemma => {
            let (model, vocab) = gemma_model(meta, &tokens)?;
            // `GemmaTokenizer`: spaces become ▁ before anything else; no prefix space.
            let pre = json!({"type": "Split", "pattern": {"String": " "},
                "behavior": "MergedWithPrevious", "invert": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]});
            (model, vocab, pre, decoder, false)
        }
        "llama" => {
            let scores = meta
                .floats("tokenizer.ggml.scores")?
                .ok_or_else(|| path_error("metadata `tokenizer.ggml.scores` is missing".into()))?;
            let (model, vocab) = sentencepiece_model(meta, &tokens, &scores)?;
            let pre = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
            (model, vocab, pre, decoder, false)
        }
        other => {
            return Err(path_error(format!(
                "tokenizer kind `{other}` is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece)"
            )))
        }
    };

    // Control tokens and the named special tokens are matched whole and marked special;
    // user-defined ones are matched whole but stay ordinary text.
    let alphabet: HashSet<char> = bytes_to_unicode().into_iter().collect();
    let named: HashSet<u64> = [&bos, &eos, &unk, &pad]
        .into_iter()
        .flatten()
        .map(|(id, _)| *id)
        .collect();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let kind = types.get(id).copied().unwrap_or(1);
        let spelled = !byte_level || token.chars().all(|c| alphabet.contains(&c));
        let special = (kind == CONTROL && spelled) || named.contains(&(id as u64));
        let user = kind == USER_DEFINED && vocab.contains_key(token.as_str());
        if special || user {
            added.push(
                json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": special}),
            );
        }
    }
    let post_processor = match (&bos, add_bos) {
        (Some((id, text)), true) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {text.clone(): {"id": text, "ids": [id], "tokens": [text]}}}),
        _ => json!({"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}}),
    };
    let normalizer = if gemma {
        json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})
    } else if phi3 {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]})
    } else {
        Value::Null
    };
    let pre_tokenizer = if phi3 { Value::Null } else { pre_tokenizer };
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
        "decoder": decoder, "model": model,
    });
    let text = |t: &Option<(u64, String)>| t.as_ref().map(|(_, s)| s.clone());
    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(&bos), "eos_token": text(&eos), "unk_token": text(&unk), "pad_token": text(&pad),
        "add_bos_token": add_bos,
        "add_eos_token": meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        "clean_up_tokenization_spaces": false,
    });
    match meta.string("tokenizer.chat_template")? {
        Some(template) => tokenizer_config["chat_template"] = json!(template),
        // Gemma's base checkpoints ship without one; its turns are Gemma's, not ChatML's.
        None if gemma => tokenizer_config["chat_template"] = json!(crate::chat::GEMMA),
        None => {}
    }
    Ok(GgufTokenizer {
        tokenizer_json,
        tokenizer_config,
    })
}

/// Byte-level BPE: tokens not already spelled in the byte alphabet are respelled, merges as stored.
fn byte_level_model(meta: &Metadata, tokens: &[String]) -> Result<(Value, HashMap<String, usize>)> {
    let table = bytes_to_unicode();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let mut vocab = HashMap::new();
    let mut ordered = serde_json::Map::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if token.chars().all(|c| alphabet.contains(&c)) {
            token.clone()
        } else {
            token.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(spelled.clone(), id);
        ordered.insert(spelled, json!(id));
    }
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .ok_or_else(|| meta.file_error("metadata `tokenizer.ggml.merges` is missing".into()))?;
    let merges: Vec<Value> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .filter(|(_, r)| !r.contains(' '))
                .map(|(l, r)| json!([l, r]))
                .ok_or_else(|| meta.file_error(format!("merge {i} `{m}` is not two tokens")))
        })
        .collect::<Result<_>>()?;
    let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
        "byte_fallback": false, "ignore_merges": false, "vocab": ordered, "merges": merges});
    Ok((model, vocab))
}

/// SentencePiece BPE as a byte-fallback BPE; merges are the stored ones, or recovered from
/// the scores as transformers' `generate_merges` does.
fn sentencepiece_model(
    meta: &Metadata,
    tokens: &[String],
    scores: &[f64],
) -> Result<(Value, HashMap<String, usize>)> {
    let mut vocab = HashMap::new();
    let mut ordered = serde_json::Map::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), id);
        ordered.insert(token.clone(), json!(id));
    }
    let merges: Vec<Value> = match meta.strings("tokenizer.ggml.merges")? {
        Some(stored) => stored
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(l, r)| json!([l, r])))
            .collect(),
        None => merges_from_scores(tokens, scores, &vocab)
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect(),
    };
    let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": ordered, "merges": merges});
    Ok((model, vocab))
}

/// Gemma's vocabulary as transformers' `gemma_tokenizer` builds it: a token of two or more
/// spaces respelled as ▁s, merges recovered with each token's position in the file as its
/// score (Gemma's stored scores do not follow its merge order), `<unk>` as the unknown token.
fn gemma_model(meta: &Metadata, tokens: &[String]) -> Result<(Value, HashMap<String, usize>)> {
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let positions: Vec<f64> = (0..respelled.len()).map(|i| -(i as f64)).collect();
    let (mut model, vocab) = sentencepiece_model(meta, &respelled, &positions)?;
    model["unk_token"] = json!("<unk>");
    Ok((model, vocab))
}

/// Every split of a token into two known tokens, best score first (`generate_merges`).
fn merges_from_scores(
    tokens: &[String],
    scores: &[f64],
    vocab: &HashMap<String, usize>,
) -> Vec<(String, String)> {
    // Python's dict(zip(tokens, scores)): first position, last score.
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f64> = HashMap::new();
    for (token, &score) in tokens.iter().zip(scores) {
        if score_of.insert(token.as_str(), score).is_none() {
            order.push(token.as_str());
        }
    }
    let mut merges: Vec<(String, String, f64)> = Vec::new();
    for token in order {
        let score = score_of.get(token).copied().unwrap_or(0.0);
        let chars: Vec<(usize, char)> = token.char_indices().collect();
        let mut local: Vec<(String, String, f64)> = chars
            .iter()
            .skip(1)
            .map(|(at, _)| (&token[..*at], &token[*at..]))
            .filter(|(l, r)| vocab.contains_key(*l) && vocab.contains_key(*r))
            .map(|(l, r)| (l.to_string(), r.to_string(), score))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab.get(l).copied(), vocab.get(r).copied()));
        merges.extend(local);
    }
    let key = |m: &(String, String, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    // Stable and descending, like Python's sorted(..., reverse=True).
    merges.sort_by(|a, b| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}
