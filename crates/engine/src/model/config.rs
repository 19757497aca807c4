//! `config.json` of a Llama-family model (Llama 2/3, Mistral, Qwen2, SmolLM, TinyLlama),
//! as written by Hugging Face transformers 4.x and 5.x.

use std::path::Path;

use candle_core::DType;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The architectures this decoder implements (`architectures[0]` in config.json).
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

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
    /// Whether `lm_head` shares `embed_tokens`' weight.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// End-of-sequence token ids from config.json.
    pub eos_token_ids: Vec<u32>,
    /// The dtype the weights files hold (`torch_dtype`, `dtype` in transformers 5): what
    /// loading reads before converting. f32 when absent or unknown.
    pub stored_dtype: DType,
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

impl LlamaConfig {
    /// Reads and validates `config.json`; `path` is the file or the folder holding it.
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| EngineError::io(&file, e))?;
        Self::from_json(&text).map_err(|e| match e {
            EngineError::Config { field, message } => {
                EngineError::bad_file(&file, format!("field `{field}`: {message}"))
            }
            other => other,
        })
    }

    /// Parses and validates the text of a config.json.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| EngineError::config("config.json", e.to_string()))?;
        let architecture = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .unwrap_or_else(|| "LlamaForCausalLM".to_string());
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(EngineError::config(
                "architectures",
                format!(
                    "`{architecture}` is not supported; supported: {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(EngineError::config(
                    "hidden_act",
                    format!("`{act}` is not supported; only `silu`"),
                ));
            }
        }
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
        // transformers 5 moves rope_theta and the scaling into `rope_parameters`.
        let rope_params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                raw.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10_000.0);
        let rope_scaling = match rope_params {
            Some(p) => {
                let kind = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => Some(
                        serde_json::from_value::<Llama3RopeScaling>(p.clone())
                            .map_err(|e| EngineError::config("rope_scaling", e.to_string()))?,
                    ),
                    other => {
                        return Err(EngineError::config(
                            "rope_scaling",
                            format!(
                                "rope_type `{other}` is not supported; supported: default, llama3"
                            ),
                        ))
                    }
                }
            }
            None => None,
        };
        let model_type = raw.model_type.unwrap_or_else(|| "llama".to_string());
        let qkv_bias = raw
            .attention_bias
            .unwrap_or(model_type == "qwen2" || architecture == "Qwen2ForCausalLM");
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
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            eos_token_ids: token_ids(&raw.eos_token_id),
            stored_dtype: stored_dtype(raw.torch_dtype.as_deref().or(raw.dtype.as_deref())),
        })
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
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }
}
