//! Prompt tuning (Lester et al. 2021) as PEFT does it (`tuners/prompt_tuning`): learned
//! embeddings of `num_virtual_tokens` virtual tokens, put before every input's embeddings
//! (PEFT-FORMATS.md §4). Saved as one tensor, `prompt_embeddings` [tokens, hidden].

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
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
    if tokens == 0 {
        return Err(EngineError::config(
            "num_virtual_tokens",
            "prompt tuning needs at least one virtual token",
        ));
    }
    let (vocab, hidden) = embed_tokens.dims2()?;
    let mut rng = SplitMix64::new(seed);
    let values = match init {
        PromptInit::Random => {
            // Box–Muller: standard normal values.
            let v: Vec<f32> = (0..tokens * hidden)
                .map(|_| {
                    let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                })
                .collect();
            Tensor::from_vec(v, (tokens, hidden), device)?.to_dtype(dtype)?
        }
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
