//! Tiny models made in code (config.json, random safetensors weights, a byte-level
//! tokenizer), so that tests and demos need no download.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::fsutil::{safetensors_bytes, write_atomic};
use crate::model::LlamaConfig;
use crate::ops::SplitMix64;

/// The shape of a tiny test model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Share lm_head with the embeddings.
    pub tie_word_embeddings: bool,
    /// Qwen2-style q/k/v bias (a Qwen2 model when `architecture` is Llama's).
    pub qkv_bias: bool,
    /// `architectures[0]`: Llama, or a family of `model::family::FAMILIES` with its parts made
    /// small enough to matter in a tiny model (a 4-position sliding window, Gemma's
    /// `query_pre_attn_scalar` unlike `head_dim`, norm weights away from their neutral value).
    pub architecture: &'static str,
    /// Weight seed.
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            tie_word_embeddings: false,
            qkv_bias: false,
            architecture: "LlamaForCausalLM",
            seed: 7,
        }
    }
}

/// Number of byte tokens; the end-of-text token comes right after them.
pub const BYTE_TOKENS: usize = 256;
/// Id of `<|endoftext|>` in the tiny tokenizer.
pub const EOS_ID: u32 = 256;
/// Vocabulary size of tiny models (bytes, EOS, and padding up to a multiple of 4).
pub const TINY_VOCAB: usize = 260;

/// GPT-2's byte → printable character map used by byte-level BPE.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in printable.iter().zip(chars) {
        map[*b as usize] = char::from_u32(c).unwrap_or(' ');
    }
    map
}

/// A byte-level BPE tokenizer.json with no merges: every byte is one token, plus
/// `<|endoftext|>`.
pub fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = bytes_to_unicode()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": EOS_ID, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// The config.json of a tiny model.
pub fn config_json(spec: &TinySpec) -> serde_json::Value {
    let arch = match spec.architecture {
        "LlamaForCausalLM" if spec.qkv_bias => "Qwen2ForCausalLM",
        other => other,
    };
    let model_type = crate::model::family::family(arch).map_or("llama", |f| f.model_type);
    let mut config = json!({
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "vocab_size": TINY_VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "attention_bias": spec.qkv_bias,
        "hidden_act": "silu",
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32"
    });
    let head_dim = spec.hidden_size / spec.num_attention_heads;
    let layer_types: Vec<&str> = (0..spec.num_hidden_layers)
        .map(|l| {
            if l % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let extra = match arch {
        "Qwen3ForCausalLM" => json!({"head_dim": head_dim}),
        "MistralForCausalLM" => json!({"sliding_window": 4}),
        // Half of each head rotated, LongRoPE past 4 positions, a 5-position window.
        "Phi3ForCausalLM" => json!({
            "partial_rotary_factor": 0.5,
            "original_max_position_embeddings": 4,
            "rope_scaling": {
                "type": "longrope",
                "short_factor": (0..head_dim / 4).map(|i| 1.0 + 0.5 * i as f64).collect::<Vec<_>>(),
                "long_factor": (0..head_dim / 4).map(|i| 2.0 + i as f64).collect::<Vec<_>>()
            },
            "sliding_window": 5
        }),
        "Gemma2ForCausalLM" => json!({
            "head_dim": head_dim,
            "hidden_act": null,
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": head_dim * 2,
            "sliding_window": 4,
            "attn_logit_softcapping": 0.5,
            "final_logit_softcapping": 2.0
        }),
        "Gemma3ForCausalLM" => json!({
            "head_dim": head_dim,
            "hidden_act": null,
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": head_dim * 2,
            "sliding_window": 4,
            "layer_types": layer_types,
            "rope_theta": null,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}
            },
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null
        }),
        _ => json!({}),
    };
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            match v {
                serde_json::Value::Null => c.remove(k),
                v => c.insert(k.clone(), v.clone()),
            };
        }
    }
    config
}

/// Writes a complete tiny model folder to `dir`.
pub fn write_tiny_model(dir: &Path, spec: &TinySpec) -> Result<()> {
    let config = config_json(spec);
    let cfg = LlamaConfig::from_json(&config.to_string())?;
    let mut rng = SplitMix64::new(spec.seed);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    // Llama and Qwen2 keep neutral norms (their figures in tests predate the other families);
    // the others get norms away from neutral, so a misplaced norm or offset shows.
    let neutral_norms = matches!(
        cfg.architecture.as_str(),
        "LlamaForCausalLM" | "Qwen2ForCausalLM"
    );
    let neutral = 1.0 - cfg.family.norm_offset as f32;
    for (name, shape) in cfg.weight_shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") && neutral_norms {
            vec![1.0; n]
        } else if name.ends_with("norm.weight") {
            (0..n)
                .map(|_| neutral + ((rng.next_f64() * 2.0 - 1.0) * 0.3) as f32)
                .collect()
        } else {
            // Uniform with std 0.1: large enough for distinct logits, small enough to train.
            (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * 0.173) as f32)
                .collect()
        };
        tensors.push((name, Tensor::from_vec(data, shape, &Device::Cpu)?));
    }
    let text = |v: &serde_json::Value| {
        serde_json::to_vec_pretty(v).map_err(|e| EngineError::config("fixture", e.to_string()))
    };
    write_atomic(&dir.join("config.json"), &text(&config)?)?;
    write_atomic(
        &dir.join("model.safetensors"),
        &safetensors_bytes(
            &tensors,
            Some(HashMap::from([("format".into(), "pt".into())])),
        )?,
    )?;
    write_atomic(&dir.join("tokenizer.json"), &text(&tokenizer_json())?)?;
    let tok_cfg = json!({
        "eos_token": "<|endoftext|>",
        "bos_token": "<|endoftext|>",
        "add_bos_token": false,
        "chat_template": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    });
    write_atomic(&dir.join("tokenizer_config.json"), &text(&tok_cfg)?)?;
    Ok(())
}
