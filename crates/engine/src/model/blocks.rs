//! The decoder's building blocks, each fused on the CPU in f32 (`fused`) and composed from
//! candle's ops elsewhere (`ops`, `rope`): one choice, made per call from the input.

use candle_core::Tensor;

use super::base_weight::BaseWeight;
use super::fused;
use super::ops;
use super::rope::apply_rope;
use crate::error::Result;

/// RMSNorm over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::applies(x) {
        fused::norm::rms_norm(x, weight, eps)
    } else {
        ops::rms_norm(x, weight, eps)
    }
}

/// Projections [batch, seq, heads, head_dim] rotated and laid out as
/// [batch, heads, seq, head_dim].
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused::applies(x) {
        fused::rope::rope_heads(x, cos, sin)
    } else {
        apply_rope(&x.transpose(1, 2)?.contiguous()?, cos, sin)
    }
}

/// `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::applies(gate) {
        fused::swiglu::swiglu(gate, up)
    } else {
        Ok((gate.silu()? * up)?)
    }
}

/// Whether [`attention`] needs the additive causal mask for `seq` queries of `x`'s dtype and
/// device: the composed path does, for more than one query; the fused and generic kernels
/// mask themselves.
pub fn needs_mask(x: &Tensor, seq: usize) -> bool {
    seq > 1 && !fused::applies(x) && !super::generic::applies(x)
}

/// Causal grouped-query attention: queries [batch, q_heads, seq, head_dim], keys and values
/// [batch, kv_heads, keys, head_dim] with the last `seq` keys the queries' own. Returns
/// [batch, seq, q_heads · head_dim]. `mask` is the additive causal mask [seq, keys] the
/// composed path uses, present where [`needs_mask`] says so.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (batch, hq, seq, d) = q.dims4()?;
    if fused::applies(q) {
        return Ok(fused::attention::causal_attention(q, k, v)?.reshape((batch, seq, hq * d))?);
    }
    if super::generic::applies(q) {
        let out = super::generic::attention::causal_attention(q, k, v)?;
        return Ok(out.transpose(1, 2)?.reshape((batch, seq, hq * d))?);
    }
    let (hkv, keys) = (k.dim(1)?, k.dim(2)?);
    let group = hq / hkv;
    // Query heads of one group stacked along the sequence, so one matmul serves the group
    // and keys are never repeated.
    let q = q.reshape((batch, hkv, group * seq, d))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = match mask {
        Some(m) => {
            let m = m
                .unsqueeze(0)?
                .broadcast_as((group, seq, keys))?
                .reshape((group * seq, keys))?;
            scores.broadcast_add(&m)?
        }
        None => scores,
    };
    let probs = ops::softmax_last_dim(&scores)?;
    Ok(probs
        .matmul(&v.contiguous()?)?
        .reshape((batch, hq, seq, d))?
        .transpose(1, 2)?
        .reshape((batch, seq, hq * d))?)
}

/// Mean masked cross-entropy of `lm_head`'s logits for `hidden` [n, h] (see
/// `ops::masked_cross_entropy`). `head` is the head's weight [vocab, h] (frozen or trained)
/// when the fused loss may compute the logits itself, chunk by chunk; `logits` computes them
/// whole.
pub fn head_loss(
    hidden: &Tensor,
    head: Option<&BaseWeight>,
    logits: impl FnOnce(&Tensor) -> Result<Tensor>,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<(Tensor, f64)> {
    match head {
        Some(w) if fused::applies(hidden) => {
            fused::cross_entropy::lm_head_cross_entropy(hidden, w, targets, weights)
        }
        Some(w) if super::generic::applies(hidden) => {
            // A quantized head is widened for this loss and dropped after it.
            super::generic::cross_entropy::lm_head_cross_entropy(
                hidden,
                &*w.dense()?,
                targets,
                weights,
            )
        }
        _ => {
            let logits = logits(hidden)?;
            ops::masked_cross_entropy(&logits, targets, weights)
        }
    }
}
