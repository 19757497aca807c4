//! PEFT's prompt-learning methods, both saved as one tensor named `prompt_embeddings`:
//! - prompt tuning (Lester et al. 2021, `tuners/prompt_tuning`, docs/FORMATS.md §4): learned
//!   embeddings [tokens, hidden] of virtual tokens put before every input's embeddings;
//! - prefix tuning (Li & Liang 2021, `tuners/prefix_tuning`, §2): learned keys and values
//!   [tokens, layers·2·kv_heads·head_dim] that every layer's attention sees before the input.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::t5::T5Model;
use crate::model::LlamaModel;
use crate::ops::SplitMix64;

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
    /// The embeddings of a text's tokens (`prompt_tuning_init_text`), repeated or cut to
    /// the number of virtual tokens.
    Text,
}

impl PromptInit {
    /// PEFT's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "RANDOM",
            Self::SampleVocab => "SAMPLE_VOCAB",
            Self::Text => "TEXT",
        }
    }
}

impl std::str::FromStr for PromptInit {
    type Err = crate::error::EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "RANDOM" => Ok(Self::Random),
            "SAMPLE_VOCAB" => Ok(Self::SampleVocab),
            "TEXT" => Ok(Self::Text),
            other => Err(crate::error::EngineError::config(
                "prompt_tuning_init",
                format!("`{other}` is not RANDOM, SAMPLE_VOCAB or TEXT"),
            )),
        }
    }
}

/// PEFT's TEXT initialisation: the text's token ids, repeated until there are `tokens` of
/// them, then cut to `tokens` (`PromptEmbedding.__init__`).
pub fn text_init_ids(text_ids: &[u32], tokens: usize) -> Vec<u32> {
    text_ids.iter().copied().cycle().take(tokens).collect()
}

/// What prompt tuning's initialisation reads from a model: the size of its embedding
/// matrix, and what its embedding module gives for token ids.
pub trait TokenEmbedding {
    /// The vocabulary and the width of an embedding row.
    fn embedding_dims(&self) -> (usize, usize);
    /// The embedding module's output [n, hidden] for `ids` [n], in the model's dtype.
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor>;
    /// The model's dtype and device.
    fn placement(&self) -> (DType, Device);
}

impl TokenEmbedding for LlamaModel {
    fn embedding_dims(&self) -> (usize, usize) {
        self.embed_tokens().dims()
    }
    /// Scaled where the family scales its embeddings (Gemma's √hidden), as PEFT copies the
    /// module's output.
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed(ids)
    }
    fn placement(&self) -> (DType, Device) {
        (self.dtype(), self.device().clone())
    }
}

impl TokenEmbedding for T5Model {
    fn embedding_dims(&self) -> (usize, usize) {
        (self.config().vocab_size, self.config().d_model)
    }
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed(&ids.unsqueeze(0)?)?.squeeze(0)?)
    }
    fn placement(&self) -> (DType, Device) {
        (self.dtype(), self.device().clone())
    }
}

/// The initial virtual-token embeddings [tokens, hidden] as a trainable variable.
/// `text_ids` are the tokens of `prompt_tuning_init_text` (TEXT init only); copied rows are
/// the model's embedding module's output, as PEFT takes them.
pub fn init_prompt(
    tokens: usize,
    init: PromptInit,
    text_ids: Option<&[u32]>,
    model: &dyn TokenEmbedding,
    seed: u64,
) -> Result<Var> {
    let (vocab, hidden) = model.embedding_dims();
    let (dtype, device) = model.placement();
    let device = &device;
    let mut rng = SplitMix64::new(seed);
    let rows = |ids: Vec<u32>| -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(crate::error::EngineError::config(
                "prompt_tuning_init_text",
                format!("token {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        let ids = Tensor::from_vec(ids, tokens, device)?;
        Ok(model.embed_ids(&ids)?.detach())
    };
    let values = match init {
        PromptInit::Random => Tensor::from_vec(
            (0..tokens * hidden)
                .map(|_| rng.next_normal() as f32)
                .collect(),
            (tokens, hidden),
            device,
        )?
        .to_dtype(dtype)?,
        PromptInit::SampleVocab => rows(
            (0..tokens)
                .map(|_| (rng.next_f64() * vocab as f64) as u32 % vocab as u32)
                .collect(),
        )?,
        PromptInit::Text => match text_ids {
            Some(ids) if !ids.is_empty() => rows(text_init_ids(ids, tokens))?,
            _ => {
                return Err(crate::error::EngineError::config(
                    "prompt_tuning_init_text",
                    "TEXT initialisation needs a text that tokenizes to at least one token",
                ))
            }
        },
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
