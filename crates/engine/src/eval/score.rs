//! Log-probabilities of tokens under a model (with whatever adapter is attached), as
//! lm-evaluation-harness and PyTorch compute them: the logits of each position in f32, a
//! log-softmax over the vocabulary, the next token's entry.

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};
use crate::model::{ForwardCtx, LlamaModel};

/// A continuation's log-likelihood and whether greedy decoding would have produced it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scored {
    /// `Σ log p(token | everything before it)` over the scored tokens.
    pub loglikelihood: f64,
    /// Whether every scored token was the most likely one.
    pub greedy: bool,
    /// How many tokens were scored.
    pub tokens: usize,
}

/// Scores `ids[i]` for every `i ≥ 1` with `scored(i)`, given `ids[..i]`.
pub fn score(model: &LlamaModel, ids: &[u32], scored: impl Fn(usize) -> bool) -> Result<Scored> {
    if ids.len() < 2 {
        return Err(EngineError::config(
            "eval",
            "a sequence needs at least two tokens to score",
        ));
    }
    let limit = model.config().max_position_embeddings;
    if ids.len() - 1 > limit {
        return Err(EngineError::config(
            "eval",
            format!("{} tokens exceed the model's context of {limit}", ids.len()),
        ));
    }
    let input = Tensor::new(&ids[..ids.len() - 1], model.device())?.unsqueeze(0)?;
    let logits = model
        .forward(&input, None, &ForwardCtx::eval())?
        .squeeze(0)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    let mut out = Scored {
        loglikelihood: 0.0,
        greedy: true,
        tokens: 0,
    };
    for (i, row) in logits.iter().enumerate() {
        let target = ids[i + 1] as usize;
        if !scored(i + 1) {
            continue;
        }
        let Some(&picked) = row.get(target) else {
            return Err(EngineError::config(
                "eval",
                format!("token id {target} is outside the model's vocabulary"),
            ));
        };
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
        out.loglikelihood += f64::from(picked - max) - sum.ln();
        out.greedy &= picked >= max;
        out.tokens += 1;
    }
    Ok(out)
}
