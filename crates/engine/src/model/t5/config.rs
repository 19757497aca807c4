//! A T5 checkpoint's `config.json` (`T5ForConditionalGeneration`: T5 v1.0, T5 v1.1,
//! Flan-T5), read as transformers reads it (`models/t5/configuration_t5.py`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The feed-forward block: `wi → act → wo`, or gated `act(wi_0) ⊙ wi_1 → wo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedForward {
    /// T5 v1.0: `wo(relu(wi(x)))`.
    Relu,
    /// T5 v1.1 and Flan-T5: `wo(gelu_tanh(wi_0(x)) ⊙ wi_1(x))` (`gated-gelu`).
    GatedGelu,
}

/// The shape and conventions of a T5 model.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Vocabulary size (rows of the shared embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Width of the feed-forward block.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks.
    pub num_decoder_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets of the attention bias.
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket.
    pub relative_attention_max_distance: usize,
    /// The layer norm's ε.
    pub layer_norm_epsilon: f64,
    /// The feed-forward block.
    pub feed_forward: FeedForward,
    /// The head is the shared embedding and the decoder's output is scaled by `d_model^-½`
    /// first (T5 v1.0); otherwise `lm_head.weight` is a matrix of its own (v1.1, Flan-T5).
    pub tie_word_embeddings: bool,
    /// The token the decoder starts from (T5: the pad token, 0).
    pub decoder_start_token_id: u32,
    /// The padding token.
    pub pad_token_id: u32,
    /// End of sequence.
    pub eos_token_id: u32,
}

#[derive(Deserialize)]
struct Raw {
    vocab_size: usize,
    d_model: usize,
    d_kv: usize,
    d_ff: usize,
    num_layers: usize,
    num_decoder_layers: Option<usize>,
    num_heads: usize,
    #[serde(default = "buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "max_distance")]
    relative_attention_max_distance: usize,
    #[serde(default = "epsilon")]
    layer_norm_epsilon: f64,
    #[serde(default = "relu")]
    feed_forward_proj: String,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default)]
    decoder_start_token_id: Option<u32>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<u32>,
}

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn epsilon() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}

impl T5Config {
    /// Parses a T5 `config.json`; unknown feed-forward kinds are refused by name.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| EngineError::config("config.json", e.to_string()))?;
        let feed_forward = match raw.feed_forward_proj.as_str() {
            "relu" => FeedForward::Relu,
            "gated-gelu" => FeedForward::GatedGelu,
            other => {
                return Err(EngineError::config(
                    "feed_forward_proj",
                    format!("`{other}` is not one the studio computes (relu, gated-gelu)"),
                ))
            }
        };
        let positive = [
            ("vocab_size", raw.vocab_size),
            ("d_model", raw.d_model),
            ("d_kv", raw.d_kv),
            ("d_ff", raw.d_ff),
            ("num_layers", raw.num_layers),
            ("num_heads", raw.num_heads),
            (
                "relative_attention_num_buckets",
                raw.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                raw.relative_attention_max_distance,
            ),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(EngineError::config(*field, "must be at least 1"));
        }
        // The encoder halves the buckets per direction, and each half keeps half of its
        // buckets exact: fewer than four leaves a direction with no exact bucket.
        if raw.relative_attention_num_buckets < 4 {
            return Err(EngineError::config(
                "relative_attention_num_buckets",
                "must be at least 4",
            ));
        }
        Ok(Self {
            vocab_size: raw.vocab_size,
            d_model: raw.d_model,
            d_kv: raw.d_kv,
            d_ff: raw.d_ff,
            num_layers: raw.num_layers,
            num_decoder_layers: raw.num_decoder_layers.unwrap_or(raw.num_layers),
            num_heads: raw.num_heads,
            relative_attention_num_buckets: raw.relative_attention_num_buckets,
            relative_attention_max_distance: raw.relative_attention_max_distance,
            layer_norm_epsilon: raw.layer_norm_epsilon,
            feed_forward,
            tie_word_embeddings: raw.tie_word_embeddings,
            decoder_start_token_id: raw.decoder_start_token_id.unwrap_or(0),
            pad_token_id: raw.pad_token_id.unwrap_or(0),
            eos_token_id: raw.eos_token_id.unwrap_or(1),
        })
    }

    /// Reads `config.json` of a model folder (or the file itself).
    pub fn from_path(path: &Path) -> Result<Self> {
        crate::model::config::read_config_json(path, Self::from_json)
    }

    /// Width of the attention's projections (`num_heads · d_kv`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

impl T5Config {
    /// Every projection as `(PEFT's module name, in, out)`, in the model's order (encoder,
    /// decoder, then the head when it is its own): what counting and targeting read without
    /// loading weights.
    pub fn projections(&self) -> Vec<(String, usize, usize)> {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let attention = |p: String| {
            [
                ("q", d, inner),
                ("k", d, inner),
                ("v", d, inner),
                ("o", inner, d),
            ]
            .map(|(n, i, o)| (format!("{p}.{n}"), i, o))
        };
        let dense = |p: String| -> Vec<(String, usize, usize)> {
            let names: &[(&str, usize, usize)] = match self.feed_forward {
                FeedForward::Relu => &[("wi", d, ff), ("wo", ff, d)],
                FeedForward::GatedGelu => &[("wi_0", d, ff), ("wi_1", d, ff), ("wo", ff, d)],
            };
            names
                .iter()
                .map(|(n, i, o)| (format!("{p}.{n}"), *i, *o))
                .collect()
        };
        let mut out = Vec::new();
        for (stack, blocks) in [
            ("encoder", self.num_layers),
            ("decoder", self.num_decoder_layers),
        ] {
            for b in 0..blocks {
                let p = format!("{stack}.block.{b}.layer");
                out.extend(attention(format!("{p}.0.SelfAttention")));
                let ff_at = if stack == "decoder" {
                    out.extend(attention(format!("{p}.1.EncDecAttention")));
                    2
                } else {
                    1
                };
                out.extend(dense(format!("{p}.{ff_at}.DenseReluDense")));
            }
        }
        if !self.tie_word_embeddings {
            out.push(("lm_head".into(), d, self.vocab_size));
        }
        out
    }

    /// Every tensor a checkpoint stores, with its shape: the shared embedding, every
    /// projection, the layer norms (two per encoder block, three per decoder block, one after
    /// each stack) and each stack's relative-attention bias (a tied head is the embedding).
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.d_model;
        let mut out = vec![("shared.weight".to_string(), vec![self.vocab_size, d])];
        out.extend(
            self.projections()
                .into_iter()
                .map(|(name, fan_in, fan_out)| (format!("{name}.weight"), vec![fan_out, fan_in])),
        );
        for (stack, blocks, norms) in [
            ("encoder", self.num_layers, 2),
            ("decoder", self.num_decoder_layers, 3),
        ] {
            for b in 0..blocks {
                for n in 0..norms {
                    out.push((
                        format!("{stack}.block.{b}.layer.{n}.layer_norm.weight"),
                        vec![d],
                    ));
                }
            }
            out.push((format!("{stack}.final_layer_norm.weight"), vec![d]));
            out.push((
                format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                vec![self.relative_attention_num_buckets, self.num_heads],
            ));
        }
        out
    }

    /// All parameters: every tensor of [`T5Config::weight_shapes`].
    pub fn parameters(&self) -> u64 {
        self.weight_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }
}

/// The architecture name of a T5 checkpoint (`architectures[0]`).
pub const ARCHITECTURE: &str = "T5ForConditionalGeneration";

/// Whether the folder holds an encoder-decoder T5 (`architectures` or `model_type`).
pub fn is_t5(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["model_type"] == "t5"
        || v["architectures"]
            .get(0)
            .and_then(|a| a.as_str())
            .is_some_and(|a| a == ARCHITECTURE)
}

/// T5's relative-position bucket of `relative` (`key position − query position`), as
/// transformers computes it (`T5Attention._relative_position_bucket`): half the buckets for
/// exact small distances, the rest logarithmic up to `max_distance`; in the encoder
/// (bidirectional) each direction has half of the buckets, in the decoder only the past counts.
pub fn relative_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let (mut buckets, mut base) = (num_buckets, 0usize);
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            base = buckets;
        }
        relative.unsigned_abs() as usize
    } else {
        (-relative.min(0)) as usize
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return base + distance;
    }
    // In f32 and truncated toward zero, as torch computes it.
    let log_ratio =
        (distance as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln();
    let large = max_exact + (log_ratio * (buckets - max_exact) as f32) as usize;
    base + large.min(buckets - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets as transformers gives them for 32 buckets and distance 128 (values from
    /// `T5Attention._relative_position_bucket` on -200..200).
    #[test]
    fn buckets_follow_transformers() {
        let enc = |r| relative_bucket(r, true, 32, 128);
        let dec = |r| relative_bucket(r, false, 32, 128);
        assert_eq!(enc(0), 0);
        assert_eq!(enc(1), 17);
        assert_eq!(enc(-1), 1);
        assert_eq!(enc(-7), 7);
        assert_eq!(enc(-8), 8);
        assert_eq!(enc(-12), 9);
        assert_eq!(enc(-127), 15);
        assert_eq!(enc(-500), 15);
        assert_eq!(enc(20), 26);
        assert_eq!(dec(3), 0);
        assert_eq!(dec(-15), 15);
        assert_eq!(dec(-16), 16);
        assert_eq!(dec(-40), 23);
        assert_eq!(dec(-1000), 31);
    }
}
