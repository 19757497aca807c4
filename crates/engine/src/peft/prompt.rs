//! PEFT's prompt-learning methods, both saved as one tensor named `prompt_embeddings`:
//! - prompt tuning (Lester et al. 2021, `tuners/prompt_tuning`, PEFT-FORMATS.md §4): learned
//!   embeddings [tokens, hidden] of virtual tokens put before every input's embeddings;
//! - prefix tuning (Li & Liang 2021, `tuners/prefix_tuning`, §2): learned keys and values
//!   [tokens, layers·2·kv_heads·head_dim] that every layer's attention sees before the input.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::ops::SplitMix64;

/// The name the virtual-token embeddings are trained and saved under.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// How the virtual tokens start (PEFT's `prompt_tuning_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PromptInit {
    /// Standard normal values, as a fresh `torch.nn.Embedding`.
    #[default]
    Random,
    /// Copies of the embeddings of tokens drawn from the vocabulary.
    SampleVocab,
}

impl PromptInit {
    /// PEFT's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "RANDOM",
            Self::SampleVocab => "SAMPLE_VOCAB",
        }
    }
}

/// The initial virtual-token embeddings [tokens, hidden] as a trainable variable.
pub fn init_prompt(
    tokens: usize,
    init: PromptInit,
    embed_tokens: &Tensor,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Var> {
    let (vocab, hidden) = embed_tokens.dims2()?;
    let mut rng = SplitMix64::new(seed);
    let values = match init {
        PromptInit::Random => Tensor::from_vec(
            (0..tokens * hidden)
                .map(|_| rng.next_normal() as f32)
                .collect(),
            (tokens, hidden),
            device,
        )?
        .to_dtype(dtype)?,
        PromptInit::SampleVocab => {
            let ids: Vec<u32> = (0..tokens)
                .map(|_| (rng.next_f64() * vocab as f64) as u32 % vocab as u32)
                .collect();
            let ids = Tensor::from_vec(ids, tokens, embed_tokens.device())?;
            embed_tokens
                .detach()
                .index_select(&ids, 0)?
                .to_dtype(dtype)?
                .to_device(device)?
        }
    };
    Ok(Var::from_tensor(&values)?)
}

/// The initial prefix [tokens, width] (standard normal, PEFT's embedding init) as a trainable
/// variable; `width` is layers·2·kv_heads·head_dim.
pub fn init_prefix(
    tokens: usize,
    width: usize,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Var> {
    let mut rng = SplitMix64::new(seed);
    let values = Tensor::from_vec(
        (0..tokens * width)
            .map(|_| rng.next_normal() as f32)
            .collect::<Vec<f32>>(),
        (tokens, width),
        device,
    )?;
    Ok(Var::from_tensor(&values.to_dtype(dtype)?)?)
}

/// The width of a prefix row for a model: layers·2·kv_heads·head_dim (PEFT stores
/// `token_dim = head_dim·kv_heads` for grouped-query attention).
pub fn prefix_width(cfg: &crate::model::LlamaConfig) -> usize {
    cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim
}
