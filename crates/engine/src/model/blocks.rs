//! The decoder's building blocks, each fused on the CPU in f32 (`fused`) and composed from
//! candle's ops elsewhere (`ops`, `rope`): one choice, made per call from the input.

use candle_core::Tensor;

pub use super::attend::Attend;
use super::base_weight::BaseWeight;
use super::family::Activation;
use super::fused;
use super::rope::apply_rope;
use crate::error::Result;
use crate::ops;

/// A norm's weight as applied, `weight + offset`, in f32: Gemma's `1 + w` in bf16 would keep
/// 8 bits of w.
pub fn applied_norm_weight(weight: &Tensor, offset: f64) -> Result<Tensor> {
    Ok((weight.to_dtype(candle_core::DType::F32)? + offset)?)
}

/// RMSNorm over the last dimension; `offset` is added to the weight first (Gemma's `1 + w`).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, offset: f64) -> Result<Tensor> {
    let shifted;
    let weight = if offset == 0.0 {
        weight
    } else {
        shifted = applied_norm_weight(weight, offset)?;
        &shifted
    };
    if fused::applies(x) {
        fused::norm::rms_norm(x, weight, eps)
    } else {
        ops::rms_norm(x, weight, eps)
    }
}

/// Projections [batch, seq, heads, head_dim] rotated and laid out as
/// [batch, heads, seq, head_dim]. Tables narrower than a head (`partial_rotary_factor`)
/// turn its leading dimensions and pass the rest through.
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (d, rotary) = (x.dim(3)?, cos.dim(1)?);
    if rotary < d {
        let turned = rope_heads(&x.narrow(3, 0, rotary)?.contiguous()?, cos, sin)?;
        let kept = x
            .narrow(3, rotary, d - rotary)?
            .transpose(1, 2)?
            .contiguous()?;
        return Ok(Tensor::cat(&[&turned, &kept], 3)?);
    }
    if fused::applies(x) {
        fused::rope::rope_heads(x, cos, sin)
    } else {
        apply_rope(&x.transpose(1, 2)?.contiguous()?, cos, sin)
    }
}

/// `act(gate) · up`.
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    match (act, fused::applies(gate)) {
        (Activation::Silu, true) => fused::swiglu::swiglu(gate, up),
        (Activation::Silu, false) => Ok((gate.silu()? * up)?),
        (Activation::GeluTanh, true) => fused::swiglu::geglu(gate, up),
        (Activation::GeluTanh, false) => Ok((ops::gelu_tanh(gate)? * up)?),
    }
}

/// Whether [`attention`] needs the additive causal mask for `seq` queries over `keys` keys
/// of `x`'s dtype and device: the composed path does, for more than one query or where a
/// sliding `window` hides some keys; the fused and generic kernels mask themselves.
pub fn needs_mask(x: &Tensor, seq: usize, keys: usize, window: Option<usize>) -> bool {
    (seq > 1 || window.is_some_and(|w| keys > w))
        && !fused::applies(x)
        && !super::generic::applies(x)
}

/// Causal grouped-query attention: queries [batch, q_heads, seq, head_dim], keys and values
/// [batch, kv_heads, keys, head_dim] with the last `seq` keys the queries' own. Returns
/// [batch, seq, q_heads · head_dim]. `mask` is the additive causal mask [seq, keys] the
/// composed path uses (with `attend`'s window), present where [`needs_mask`] says so.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    attend: Attend,
) -> Result<Tensor> {
    let (batch, hq, seq, d) = q.dims4()?;
    if fused::applies(q) {
        return Ok(
            fused::attention::causal_attention(q, k, v, attend)?.reshape((batch, seq, hq * d))?,
        );
    }
    if super::generic::applies(q) {
        let out = super::generic::attention::causal_attention(q, k, v, attend)?;
        return Ok(out.transpose(1, 2)?.reshape((batch, seq, hq * d))?);
    }
    let (hkv, keys) = (k.dim(1)?, k.dim(2)?);
    let group = hq / hkv;
    // Query heads of one group stacked along the sequence, so one matmul serves the group
    // and keys are never repeated.
    let q = q.reshape((batch, hkv, group * seq, d))?;
    let scores = ops::soft_cap((q.matmul(&k.t()?)? * attend.scale)?, attend.softcap)?;
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
/// whole (soft-capped already where `softcap` says the model caps them).
pub fn head_loss(
    hidden: &Tensor,
    head: Option<&BaseWeight>,
    logits: impl FnOnce(&Tensor) -> Result<Tensor>,
    targets: &Tensor,
    weights: &Tensor,
    softcap: Option<f64>,
) -> Result<(Tensor, f64)> {
    match head {
        Some(w) if fused::applies(hidden) => {
            fused::cross_entropy::lm_head_cross_entropy(hidden, w, targets, weights, softcap)
        }
        Some(w) if super::generic::applies(hidden) && softcap.is_none() => {
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
