//! `config.json` of a supported decoder (Llama 2/3, Mistral, Qwen2, Qwen3, Gemma 3, SmolLM,
//! TinyLlama), as written by Hugging Face transformers 4.x and 5.x.

use std::path::Path;

use candle_core::DType;
use serde::Deserialize;

use super::family::{self, Activation, Family, LayerKind, SlidingLayers};
use super::multimodal::{self, Multimodal};
use crate::error::{EngineError, Result};

/// Llama 3 style frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Llama3RopeScaling {
    /// Overall stretch of the wavelengths.
    pub factor: f64,
    /// Wavelengths shorter than `original / high_freq_factor` are kept.
    pub low_freq_factor: f64,
    /// Wavelengths longer than `original / low_freq_factor` are scaled by `factor`.
    pub high_freq_factor: f64,
    /// The context length the model was pretrained with.
    pub original_max_position_embeddings: usize,
}

/// LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini; transformers `_compute_longrope_parameters`):
/// each frequency divided by a per-frequency factor, the short ones up to the pretraining
/// context and the long ones past it, and cos/sin multiplied by `attention_factor`.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    /// Factors used while the sequence fits `original_max_position_embeddings`.
    pub short_factor: Vec<f64>,
    /// Factors used past it.
    pub long_factor: Vec<f64>,
    /// The context the model was pretrained with.
    pub original_max_position_embeddings: usize,
    /// The factor on cos and sin: given, or `√(1 + ln(max/original) / ln(original))`.
    pub attention_factor: f64,
}

/// YaRN (`rope_type` `yarn`: Qwen2.5/Qwen3 past 32k, transformers `_compute_yarn_parameters`):
/// frequencies blended between the given ones and ones divided by `factor` along a ramp over
/// the dimensions, and cos/sin multiplied by `attention_factor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    /// How far the context is stretched.
    pub factor: f64,
    /// The context the model was pretrained with.
    pub original_max_position_embeddings: usize,
    /// Rotations past which a dimension keeps its frequency (32 by default).
    pub beta_fast: f64,
    /// Rotations below which a dimension takes the divided frequency (1 by default).
    pub beta_slow: f64,
    /// The factor on cos and sin: given, or YaRN's `0.1 · ln(factor) + 1` (with DeepSeek's
    /// `mscale` / `mscale_all_dim` where both are given).
    pub attention_factor: f64,
    /// Whether the ramp's ends are rounded outwards to whole dimensions (true by default).
    pub truncate: bool,
}

/// Raw config.json: both the transformers-4 and transformers-5 spellings are read.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    eos_token_id: Option<serde_json::Value>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    /// Missing and `null` differ: Mistral and Gemma default a missing window to 4096.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    rope_local_base_freq: Option<f64>,
    partial_rotary_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    /// Missing and `null` differ: Gemma 2 defaults missing caps to 30 and 50.
    #[serde(default, deserialize_with = "present")]
    final_logit_softcapping: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<serde_json::Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

/// The validated configuration the decoder is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `architectures[0]`, e.g. `LlamaForCausalLM`.
    pub architecture: String,
    /// `model_type`, e.g. `llama` or `qwen2`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama 3 RoPE scaling, when present.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Linear RoPE scaling of the full-attention layers (positions divided by it; 1 = none).
    pub rope_linear_factor: f64,
    /// The RoPE base of sliding-window layers where it differs (Gemma 3's local base).
    pub local_rope_theta: Option<f64>,
    /// LongRoPE's factors (Phi-3), when present.
    pub longrope: Option<LongRope>,
    /// YaRN scaling of the full-attention layers, when present.
    pub yarn: Option<Yarn>,
    /// The leading dimensions of each head the rotary embedding turns (`partial_rotary_factor`
    /// × head_dim; all of them but in Phi-4-mini-like models).
    pub rotary_dim: usize,
    /// Whether `lm_head` shares `embed_tokens`' weight.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// The parts the architecture is made of (`family::FAMILIES`).
    pub family: Family,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// The factor on attention scores: `head_dim^-½`, or `query_pre_attn_scalar^-½` (Gemma).
    pub attention_scale: f64,
    /// Positions a sliding-window layer sees, its own included.
    pub sliding_window: Option<usize>,
    /// Full or sliding-window attention, per layer.
    pub layer_kinds: Vec<LayerKind>,
    /// Attention scores become `cap · tanh(score / cap)` (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Final logits become `cap · tanh(logit / cap)` (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// End-of-sequence token ids from config.json.
    pub eos_token_ids: Vec<u32>,
    /// The dtype the weights files hold (`torch_dtype`, `dtype` in transformers 5): what
    /// loading reads before converting. f32 when absent or unknown.
    pub stored_dtype: DType,
    /// The multimodal checkpoint this text decoder sits in (Gemma 3 4B–27B), if any: its
    /// tensors and its adapters' modules are named below the language model there.
    pub multimodal: Option<Multimodal>,
}

/// `float32`, `bfloat16`, `float16` (with or without `torch.`) as a dtype.
fn stored_dtype(name: Option<&str>) -> DType {
    match name.map(|n| n.trim_start_matches("torch.")) {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    }
}

fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Keeps an explicit `null` as `Some(Null)`; a missing field stays `None` (`serde(default)`).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// The rotary embedding's settings, from transformers 4's `rope_theta` / `rope_scaling` /
/// `rope_local_base_freq` or transformers 5's `rope_parameters` (flat, or per layer kind
/// as Gemma 3 writes it: `{"full_attention": {...}, "sliding_attention": {...}}`).
struct RopeFields {
    theta: f64,
    llama3: Option<Llama3RopeScaling>,
    linear_factor: f64,
    local_theta: Option<f64>,
    longrope: Option<LongRope>,
    yarn: Option<Yarn>,
    partial_factor: f64,
}

impl RopeFields {
    fn parse(raw: &RawConfig, family: &Family) -> Result<Self> {
        let params = raw.rope_parameters.as_ref();
        let per_kind = |k: &str| params.and_then(|p| p.get(k));
        let full = per_kind("full_attention")
            .or(params)
            .or(raw.rope_scaling.as_ref());
        let theta_of = |p: Option<&serde_json::Value>| {
            p.and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64())
        };
        let theta = raw
            .rope_theta
            .or_else(|| theta_of(full))
            .unwrap_or(family.rope_theta);
        let local_theta = theta_of(per_kind("sliding_attention"))
            .or(raw.rope_local_base_freq)
            .or(family.local_rope_theta);
        for (field, v) in [
            ("rope_theta", Some(theta)),
            ("rope_local_base_freq", local_theta),
        ] {
            if v.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
                return Err(EngineError::config(field, "must be a positive number"));
            }
        }
        let (mut llama3, mut linear_factor, mut longrope, mut yarn) = (None, 1.0, None, None);
        if let Some(p) = full {
            let kind = p
                .get("rope_type")
                .or_else(|| p.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            match kind {
                "default" => {}
                "llama3" => {
                    llama3 = Some(
                        serde_json::from_value::<Llama3RopeScaling>(p.clone())
                            .map_err(|e| EngineError::config("rope_scaling", e.to_string()))?,
                    )
                }
                "linear" => {
                    linear_factor = p
                        .get("factor")
                        .and_then(|v| v.as_f64())
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .ok_or_else(|| {
                            EngineError::config(
                                "rope_scaling",
                                "linear scaling needs a positive `factor`",
                            )
                        })?
                }
                "longrope" | "su" => longrope = Some(LongRope::parse(raw, p)?),
                "yarn" => yarn = Some(Yarn::parse(raw, p)?),
                other => {
                    return Err(EngineError::config(
                        "rope_scaling",
                        format!("rope_type `{other}` is not supported; supported: default, linear, llama3, longrope, yarn"),
                    ))
                }
            }
        }
        let partial_factor = raw
            .partial_rotary_factor
            .or_else(|| {
                full.and_then(|p| p.get("partial_rotary_factor"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(1.0);
        if !(partial_factor > 0.0 && partial_factor <= 1.0) {
            return Err(EngineError::config(
                "partial_rotary_factor",
                "must be in (0, 1]",
            ));
        }
        Ok(Self {
            theta,
            llama3,
            linear_factor,
            local_theta,
            longrope,
            yarn,
            partial_factor,
        })
    }
}

impl Yarn {
    /// YaRN's attention scaling for a stretch of `scale` (its Eq. 21, transformers
    /// `yarn_get_mscale`): `0.1 · m · ln(scale) + 1`, 1 where nothing is stretched.
    pub fn mscale(scale: f64, m: f64) -> f64 {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    }

    /// Read as transformers 5 reads it: `original_max_position_embeddings` from the config's
    /// top level first (`standardize_rope_params`), then the scaling's, then the context;
    /// a missing `factor` is the context over the original one; a zero or missing beta takes
    /// its default (Python's `or`).
    fn parse(raw: &RawConfig, p: &serde_json::Value) -> Result<Self> {
        let number = |key: &str| p.get(key).and_then(|v| v.as_f64());
        let original = raw
            .original_max_position_embeddings
            .or_else(|| {
                p.get("original_max_position_embeddings")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as usize)
            })
            .or(raw.max_position_embeddings)
            .filter(|o| *o > 1)
            .ok_or_else(|| {
                EngineError::config(
                    "original_max_position_embeddings",
                    "yarn needs the pretraining context",
                )
            })?;
        let factor = number("factor")
            .unwrap_or(raw.max_position_embeddings.unwrap_or(original) as f64 / original as f64);
        if !(factor.is_finite() && factor > 0.0) {
            return Err(EngineError::config(
                "rope_scaling",
                "yarn's `factor` must be a positive number",
            ));
        }
        let attention_factor = match (
            number("attention_factor"),
            number("mscale").filter(|m| *m != 0.0),
            number("mscale_all_dim").filter(|m| *m != 0.0),
        ) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) => Self::mscale(factor, m) / Self::mscale(factor, all),
            _ => Self::mscale(factor, 1.0),
        };
        if !(attention_factor.is_finite() && attention_factor > 0.0) {
            return Err(EngineError::config(
                "rope_scaling",
                "yarn's `attention_factor` must be a positive number",
            ));
        }
        let beta = |key: &str, default: f64| number(key).filter(|b| *b != 0.0).unwrap_or(default);
        Ok(Self {
            factor,
            original_max_position_embeddings: original,
            beta_fast: beta("beta_fast", 32.0),
            beta_slow: beta("beta_slow", 1.0),
            attention_factor,
            truncate: p.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true),
        })
    }
}

impl LongRope {
    fn parse(raw: &RawConfig, p: &serde_json::Value) -> Result<Self> {
        let factors = |key: &str| -> Result<Vec<f64>> {
            p.get(key)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect::<Vec<_>>())
                .filter(|f: &Vec<f64>| !f.is_empty() && f.iter().all(|x| x.is_finite() && *x > 0.0))
                .ok_or_else(|| {
                    EngineError::config(
                        "rope_scaling",
                        format!("longrope needs positive `{key}` numbers"),
                    )
                })
        };
        let original = p
            .get("original_max_position_embeddings")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .or(raw.original_max_position_embeddings)
            .filter(|o| *o > 1)
            .ok_or_else(|| {
                EngineError::config(
                    "original_max_position_embeddings",
                    "longrope needs the pretraining context",
                )
            })?;
        let max = raw.max_position_embeddings.unwrap_or(original) as f64;
        let factor = max / original as f64;
        let attention_factor = match p.get("attention_factor").and_then(|v| v.as_f64()) {
            Some(f) => f,
            None if factor <= 1.0 => 1.0,
            None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
        };
        Ok(Self {
            short_factor: factors("short_factor")?,
            long_factor: factors("long_factor")?,
            original_max_position_embeddings: original,
            attention_factor,
        })
    }
}

/// Full or sliding attention per layer: `layer_types` when the config lists them, else the
/// family's rule (`Family::sliding_layers`).
fn layer_kinds(raw: &RawConfig, family: &Family) -> Result<Vec<LayerKind>> {
    let n = raw.num_hidden_layers;
    if let Some(types) = &raw.layer_types {
        if types.len() != n {
            return Err(EngineError::config(
                "layer_types",
                format!("{} entries for num_hidden_layers = {n}", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(LayerKind::Full),
                "sliding_attention" => Ok(LayerKind::Sliding),
                other => Err(EngineError::config(
                    "layer_types",
                    format!(
                        "`{other}` is not supported; supported: full_attention, sliding_attention"
                    ),
                )),
            })
            .collect();
    }
    let kind = |sliding: bool| {
        if sliding {
            LayerKind::Sliding
        } else {
            LayerKind::Full
        }
    };
    Ok(match family.sliding_layers {
        SlidingLayers::None => vec![LayerKind::Full; n],
        SlidingLayers::All => vec![LayerKind::Sliding; n],
        SlidingLayers::EveryOther => (0..n).map(|i| kind(i % 2 == 0)).collect(),
        SlidingLayers::AllButEveryNth => {
            let pattern = raw.sliding_window_pattern.unwrap_or(6).max(1);
            (0..n)
                .map(|i| kind(!(i + 1).is_multiple_of(pattern)))
                .collect()
        }
        SlidingLayers::FromMaxWindowLayers => {
            let from = raw.max_window_layers.unwrap_or(28);
            (0..n).map(|i| kind(i >= from)).collect()
        }
    })
}

/// A soft-capping factor: the field's number, none for `null`, `default` when missing.
fn softcap(
    field: &str,
    value: &Option<serde_json::Value>,
    default: Option<f64>,
) -> Result<Option<f64>> {
    match value {
        None => Ok(default),
        Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|c| c.is_finite() && *c > 0.0)
            .map(Some)
            .ok_or_else(|| EngineError::config(field, "must be a positive number or null")),
    }
}

/// The window of sliding layers: `sliding_window`, the family's default when the field is
/// missing (Mistral's and Gemma's 4096, as transformers has it); Qwen uses it only with
/// `use_sliding_window`.
fn sliding_window(raw: &RawConfig, family: &Family) -> Result<Option<usize>> {
    if family.sliding_layers == SlidingLayers::FromMaxWindowLayers
        && raw.use_sliding_window != Some(true)
    {
        return Ok(None);
    }
    match &raw.sliding_window {
        None => Ok(family.sliding_window),
        Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|w| *w > 0)
            .map(|w| Some(w as usize))
            .ok_or_else(|| {
                EngineError::config("sliding_window", "must be a positive integer or null")
            }),
    }
}

/// `parse` of a model's `config.json` (`path` is the file or the folder holding it); a field
/// it refuses is named with the file.
pub fn read_config_json<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| EngineError::io(&file, e))?;
    parse(&text).map_err(|e| match e {
        EngineError::Config { field, message } => {
            EngineError::bad_file(&file, format!("field `{field}`: {message}"))
        }
        other => other,
    })
}

impl LlamaConfig {
    /// Reads and validates `config.json`; `path` is the file or the folder holding it.
    pub fn from_path(path: &Path) -> Result<Self> {
        read_config_json(path, Self::from_json)
    }

    /// Parses and validates the text of a config.json.
    pub fn from_json(text: &str) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| EngineError::config("config.json", e.to_string()))?;
        let (json, multimodal) = match multimodal::text_config(&json)? {
            Some((text, outer)) => (text, Some(outer)),
            None => (json, None),
        };
        let raw: RawConfig = serde_json::from_value(json).map_err(|e| {
            let field = if multimodal.is_some() {
                "text_config"
            } else {
                "config.json"
            };
            EngineError::config(field, e.to_string())
        })?;
        let architecture = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .unwrap_or_else(|| "LlamaForCausalLM".to_string());
        let family = family::family(&architecture).ok_or_else(|| {
            EngineError::config(
                "architectures",
                format!(
                    "`{architecture}` is not supported; supported: {}",
                    family::supported()
                ),
            )
        })?;
        let (act_field, act_name) = match (&raw.hidden_activation, &raw.hidden_act) {
            (Some(a), _) => ("hidden_activation", Some(a)),
            (None, a) => ("hidden_act", a.as_ref()),
        };
        let activation = match act_name {
            None => family.activation,
            Some(name) => Activation::parse(name).ok_or_else(|| {
                EngineError::config(
                    act_field,
                    format!("`{name}` is not supported; supported: silu, gelu_pytorch_tanh"),
                )
            })?,
        };
        let (attn_cap, final_cap) = family.softcaps.unzip();
        let attn_softcap = softcap(
            "attn_logit_softcapping",
            &raw.attn_logit_softcapping,
            attn_cap,
        )?;
        let final_softcap = softcap(
            "final_logit_softcapping",
            &raw.final_logit_softcapping,
            final_cap,
        )?;
        // Sizes past these are no model anyone trains on one machine, but a hostile file that
        // would make every later count overflow or allocation abort.
        let bounds = [
            ("hidden_size", 1usize << 16),
            ("intermediate_size", 1 << 18),
            ("num_hidden_layers", 1 << 10),
            ("vocab_size", 1 << 22),
            ("num_attention_heads", 1 << 10),
            ("num_key_value_heads", 1 << 10),
            ("head_dim", 1 << 11),
            ("max_position_embeddings", 1 << 24),
        ];
        let positive = |field: &str, v: usize| {
            let max = bounds
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(usize::MAX, |b| b.1);
            if v == 0 {
                Err(EngineError::config(field, "must be positive"))
            } else if v > max {
                Err(EngineError::config(
                    field,
                    format!("{v} is beyond any supported model (at most {max})"),
                ))
            } else {
                Ok(v)
            }
        };
        if let Some(n) = raw.max_position_embeddings {
            positive("max_position_embeddings", n)?;
        }
        for (field, v) in [
            ("rms_norm_eps", raw.rms_norm_eps),
            ("rope_theta", raw.rope_theta),
        ] {
            if v.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
                return Err(EngineError::config(field, "must be a positive number"));
            }
        }
        positive("hidden_size", raw.hidden_size)?;
        positive("intermediate_size", raw.intermediate_size)?;
        positive("num_hidden_layers", raw.num_hidden_layers)?;
        positive("vocab_size", raw.vocab_size)?;
        let heads = positive("num_attention_heads", raw.num_attention_heads)?;
        let kv_heads = positive(
            "num_key_value_heads",
            raw.num_key_value_heads.unwrap_or(heads),
        )?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(EngineError::config(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads = {heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => positive("head_dim", d)?,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(EngineError::config(
                    "num_attention_heads",
                    format!("{heads} does not divide hidden_size = {}", raw.hidden_size),
                ))
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(EngineError::config(
                "head_dim",
                "must be even for rotary embeddings",
            ));
        }
        let rope = RopeFields::parse(&raw, &family)?;
        let rotary_dim = ((head_dim as f64 * rope.partial_factor) as usize) / 2 * 2;
        if rotary_dim == 0 {
            return Err(EngineError::config(
                "partial_rotary_factor",
                "leaves no dimension of a head to rotate",
            ));
        }
        if let Some(l) = &rope.longrope {
            for f in [&l.short_factor, &l.long_factor] {
                if f.len() != rotary_dim / 2 {
                    return Err(EngineError::config(
                        "rope_scaling",
                        format!(
                            "longrope has {} factors; the rotary embedding has {} frequencies",
                            f.len(),
                            rotary_dim / 2
                        ),
                    ));
                }
            }
        }
        let sliding_window = sliding_window(&raw, &family)?;
        // Without a window every layer attends to everything, whatever it is called.
        let layer_kinds = match sliding_window {
            Some(_) => layer_kinds(&raw, &family)?,
            None => vec![LayerKind::Full; raw.num_hidden_layers],
        };
        let sliding_window = sliding_window.filter(|_| layer_kinds.contains(&LayerKind::Sliding));
        if let Some(s) = raw.query_pre_attn_scalar {
            if !(s.is_finite() && s > 0.0) {
                return Err(EngineError::config(
                    "query_pre_attn_scalar",
                    "must be a positive number",
                ));
            }
        }
        // Written as `Attend::causal` computes it, so Llama's factor is that one bit for bit.
        let attention_scale = 1.0
            / raw
                .query_pre_attn_scalar
                .filter(|_| family.query_pre_attn_scalar)
                .unwrap_or(head_dim as f64)
                .sqrt();
        let model_type = raw
            .model_type
            .clone()
            .unwrap_or_else(|| family.model_type.to_string());
        let qkv_bias = raw.attention_bias.unwrap_or(family.qkv_bias);
        Ok(Self {
            architecture,
            model_type,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope.theta,
            rope_scaling: rope.llama3,
            rope_linear_factor: rope.linear_factor,
            local_rope_theta: rope.local_theta,
            rotary_dim,
            longrope: rope.longrope,
            yarn: rope.yarn,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(family.tied_embeddings),
            qkv_bias,
            family,
            activation,
            attention_scale,
            sliding_window,
            layer_kinds,
            attn_softcap,
            final_softcap,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            eos_token_ids: token_ids(&raw.eos_token_id),
            stored_dtype: stored_dtype(raw.torch_dtype.as_deref().or(raw.dtype.as_deref())),
            multimodal,
        })
    }

    /// The checkpoint's `architectures[0]`: the multimodal model's where the decoder sits in
    /// one, else the decoder's.
    pub fn checkpoint_architecture(&self) -> &str {
        self.multimodal
            .as_ref()
            .map_or(&self.architecture, |m| &m.architecture)
    }

    /// The decoder's layer count where it sits in a multimodal checkpoint (what an adapter
    /// export needs to name its modules there), else `None`.
    pub fn multimodal_layers(&self) -> Option<usize> {
        self.multimodal.as_ref().map(|_| self.num_hidden_layers)
    }

    /// The decoder's name of a tensor stored as `stored` in this checkpoint; `None` for a
    /// tensor outside the decoder (a vision tower's).
    pub fn text_tensor(&self, stored: &str) -> Option<String> {
        match self.multimodal {
            Some(_) => Multimodal::text_name(stored),
            None => Some(stored.to_string()),
        }
    }

    /// Whether layer `l` attends through a sliding window, and how wide.
    pub fn window(&self, l: usize) -> Option<usize> {
        match self.layer_kinds.get(l) {
            Some(LayerKind::Sliding) => self.sliding_window,
            _ => None,
        }
    }

    /// The factor on the embeddings: √hidden for Gemma, else none.
    pub fn embedding_scale(&self) -> Option<f64> {
        self.family
            .scaled_embeddings
            .then(|| (self.hidden_size as f64).sqrt())
    }

    /// Output width of q_proj.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Output width of k_proj and v_proj.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The linear layers of one block as `(name, in_features, out_features, has_bias)`,
    /// named as in transformers' module tree below `model.layers.{i}.`.
    pub fn block_linears(&self) -> Vec<(&'static str, usize, usize, bool)> {
        let (h, i, b) = (self.hidden_size, self.intermediate_size, self.qkv_bias);
        if self.family.fused_projections {
            let qkv = self.q_dim() + 2 * self.kv_dim();
            return vec![
                ("self_attn.qkv_proj", h, qkv, b),
                ("self_attn.o_proj", self.q_dim(), h, false),
                ("mlp.gate_up_proj", h, 2 * i, false),
                ("mlp.down_proj", i, h, false),
            ];
        }
        vec![
            ("self_attn.q_proj", h, self.q_dim(), b),
            ("self_attn.k_proj", h, self.kv_dim(), b),
            ("self_attn.v_proj", h, self.kv_dim(), b),
            ("self_attn.o_proj", self.q_dim(), h, false),
            ("mlp.gate_proj", h, i, false),
            ("mlp.up_proj", h, i, false),
            ("mlp.down_proj", i, h, false),
        ]
    }

    /// Every weight tensor of the model with its shape, in transformers' names.
    /// A tied `lm_head` is listed once (as `model.embed_tokens.weight`).
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            for (name, fan_in, fan_out, bias) in self.block_linears() {
                out.push((format!("{p}.{name}.weight"), vec![fan_out, fan_in]));
                if bias {
                    out.push((format!("{p}.{name}.bias"), vec![fan_out]));
                }
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            if self.family.qk_norm {
                let d = self.head_dim;
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
            }
            if self.family.sandwich_norms {
                out.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![h]));
                out.push((format!("{p}.post_feedforward_layernorm.weight"), vec![h]));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }
}
