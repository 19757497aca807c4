//! Merging adapters into the base weights, as PEFT's `merge_and_unload` does
//! (docs/FORMATS.md §7): LoRA `W + s·BA`; DoRA `(m / ‖W + s·BA‖_row) ⊙ (W + s·BA)`; IA³ rows
//! (and the bias) scaled by `l`, or for a feed-forward module its columns.

use candle_core::Tensor;

use super::lora::row_norms;
use crate::error::{EngineError, Result};
use crate::model::{Linear, LlamaModel};

/// The weight and bias of `lin` with its adapter folded in (the layer itself unchanged).
pub fn merged_weight(lin: &Linear) -> Result<(Tensor, Option<Tensor>)> {
    let mut w = lin.weight.dense()?.detach();
    let mut bias = lin.bias.as_ref().map(Tensor::detach);
    if let Some(lora) = &lin.lora {
        let updated = (&w + (lora.b.detach().matmul(&lora.a.detach())? * lora.scale)?)?;
        w = match &lora.magnitude {
            Some(m) => {
                let g = m.detach().broadcast_div(&row_norms(&updated)?)?;
                updated.broadcast_mul(&g.unsqueeze(1)?)?
            }
            None => updated,
        };
    }
    if let Some(ia3) = &lin.ia3 {
        let l = ia3.l.detach().flatten_all()?;
        if ia3.feedforward {
            w = w.broadcast_mul(&l.unsqueeze(0)?)?;
        } else {
            w = w.broadcast_mul(&l.unsqueeze(1)?)?;
            bias = bias.map(|b| b.mul(&l)).transpose()?;
        }
    }
    Ok((w, bias))
}

/// Folds every adapter of `model` into its base weights and removes the adapters; returns
/// how many layers changed. A tied `lm_head` cannot take an adapter's change without changing
/// the embeddings too, so that is refused.
pub fn merge_adapters(model: &mut LlamaModel) -> Result<usize> {
    check_mergeable(model)?;
    let mut merged = 0;
    for lin in model.linears_mut() {
        if lin.lora.is_none() && lin.ia3.is_none() {
            continue;
        }
        let (w, b) = merged_weight(lin)?;
        lin.weight = w.into();
        lin.bias = b;
        lin.lora = None;
        lin.ia3 = None;
        merged += 1;
    }
    Ok(merged)
}

/// Refuses what no weight can hold: bottleneck adapters, virtual tokens, an adapter on a
/// tied `lm_head` (its change would change the embeddings too).
pub fn check_mergeable(model: &LlamaModel) -> Result<()> {
    if model.has_bottleneck_adapters() {
        return Err(EngineError::config(
            "merge",
            "bottleneck adapters are non-linear and cannot be folded into weights; export the \
             adapter instead of a merged model",
        ));
    }
    if model.prompt().is_some() || model.prefix().is_some() {
        return Err(EngineError::config(
            "merge",
            "prompt and prefix tuning add virtual tokens, which no weight can hold; export the \
             adapter instead of a merged model",
        ));
    }
    let tied = model.config().tie_word_embeddings;
    let adapted_head = model
        .linears()
        .into_iter()
        .any(|l| l.name == "lm_head" && (l.lora.is_some() || l.ia3.is_some()));
    if tied && adapted_head {
        return Err(EngineError::config(
            "merge",
            "the adapter changes lm_head, whose weight is tied to the embeddings; \
             export the adapter instead of a merged model",
        ));
    }
    Ok(())
}
