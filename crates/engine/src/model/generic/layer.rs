//! A whole decoder layer as one autograd node on any device: RMSNorm, q/k/v (apart, or one
//! `qkv_proj` split after the product: Phi-3; with each head's RMSNorm where the family has
//! one: Qwen3, Gemma 3) and RoPE (on a head's leading dimensions only where the family says:
//! Phi-4-mini), blocked attention with
//! the family's score factor, soft cap and window, o_proj (its output normed in Gemma) and
//! the residual sum, RMSNorm, gate/up (or one `gate_up_proj`), SwiGLU or GeGLU, down_proj (normed in Gemma) and the
//! residual sum, with the LoRA (or DoRA) branches or IA³ scales of any of the projections, or prefix tuning's keys and values before the layer's own. Norm weights are
//! applied as `w + offset` in f32 (Gemma's `1 + w`).
//!
//! The forward pass runs outside candle's graph and re-enters it as one op
//! (`reentry::Precomputed`) whose backward pass is written here. It keeps the roped q and
//! k, v, the attention output, the residual stream between the sublayers and gate/up
//! (about 2·hidden + 2·(q+kv width) + 2·intermediate values per token), and where the family
//! has them the q/k heads before their norms and the two sublayers' outputs before theirs;
//! with gradient checkpointing only the input, and the backward pass runs the forward pass
//! again. The norms and the activation are recomputed from what is kept. The LoRA matrices
//! reach it as one packed tensor, as in `fused::layer`.

use std::sync::Mutex;

use candle_core::Tensor;
use candle_core::{CustomOp1, CustomOp2, DType};

use super::attention::Attention;
use super::elementwise::{gated, gated_backward, rms_norm, rms_norm_backward, Rotary};
use super::projection::{Ia3, Lora, Projection};
use crate::error::Result;
use crate::model::family::Activation;
use crate::model::fused::layer::{LayerParts, Slots, GATE, GATE_UP, K, Q, QKV, UP, V};
use crate::model::reentry::{precomputed_forward, Precomputed};

/// What the backward pass reads besides the input.
struct Kept {
    /// Roped queries [batch, q_heads, seq, d]; the prefix's keys and values, if any, then the
    /// roped keys and the values [batch, kv_heads, prefix + seq, d].
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// The query and key heads before their norms, where the family norms them.
    qk_raw: Option<(Tensor, Tensor)>,
    /// The attention output [tokens, q_heads · d], o_proj's input.
    attn: Tensor,
    /// o_proj's and down_proj's outputs [tokens, hidden], where the family norms them.
    o_out: Option<Tensor>,
    down_out: Option<Tensor>,
    /// The residual stream after attention [tokens, hidden].
    mid: Tensor,
    /// gate and up [tokens, intermediate].
    gate: Tensor,
    up: Tensor,
}

/// What the generic layer takes that the CPU's fused layer does not.
#[derive(Clone, Copy)]
pub struct Extras<'a> {
    /// Prefix tuning's keys and values for the layer [batch, kv_heads, prefix, head_dim].
    pub prefix: Option<(&'a Tensor, &'a Tensor)>,
}

/// A layer's norm weights as applied: `w + offset`, in f32.
struct Norms {
    /// Before attention and before the MLP.
    input: Tensor,
    mlp: Tensor,
    /// Of the attention's and the MLP's outputs (Gemma).
    outputs: Option<(Tensor, Tensor)>,
    /// Of each query and key head (Qwen3, Gemma 3).
    qk: Option<(Tensor, Tensor)>,
}

impl Norms {
    fn new(parts: &LayerParts) -> Result<Self> {
        let applied = |w: &Tensor| -> Result<Tensor> {
            Ok(w.to_dtype(DType::F32)?.affine(1.0, parts.norm_offset)?)
        };
        let pair = |p: Option<(&Tensor, &Tensor)>| -> Result<Option<(Tensor, Tensor)>> {
            p.map(|(a, b)| Ok((applied(a)?, applied(b)?))).transpose()
        };
        Ok(Self {
            input: applied(parts.input_norm)?,
            mlp: applied(parts.post_norm)?,
            outputs: pair(parts.output_norms)?,
            qk: pair(parts.qk_norm)?,
        })
    }
}

struct Layer {
    projections: Vec<Projection>,
    slots: Slots,
    /// Prefix tuning's keys and values, seen by every query before its own.
    prefix: Option<(Tensor, Tensor)>,
    norms: Norms,
    activation: Activation,
    rotary: Rotary,
    eps: f64,
    attention: Attention,
}

/// The layer as an op: its output until candle takes it, what the backward pass reads
/// (none with gradient checkpointing).
struct LayerOp {
    layer: Layer,
    output: Precomputed,
    kept: Mutex<Option<Kept>>,
}

/// `t` normed by `w` where there is a norm, else `t`.
fn normed(t: Tensor, w: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    Ok(match w {
        Some(w) => rms_norm(&t, w, eps)?.0,
        None => t,
    })
}

/// dL/dt of [`normed`] for `dy`, `t` the norm's input.
fn normed_backward(t: Option<&Tensor>, w: Option<&Tensor>, eps: f64, dy: Tensor) -> Result<Tensor> {
    Ok(match (t, w) {
        (Some(t), Some(w)) => {
            let (_, rstd) = rms_norm(t, w, eps)?;
            rms_norm_backward(t, w, &rstd, &dy)?
        }
        _ => dy,
    })
}

impl Layer {
    fn tokens(&self) -> usize {
        self.attention.batch * self.attention.seq
    }

    /// [tokens, heads · d] → [batch, heads, seq, d].
    fn heads(&self, t: &Tensor, heads: usize) -> Result<Tensor> {
        let a = &self.attention;
        Ok(t.reshape((a.batch, a.seq, heads, a.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// [batch, heads, seq, d] → [tokens, heads · d].
    fn rows(&self, t: &Tensor) -> Result<Tensor> {
        let (_, heads, _, d) = t.dims4()?;
        Ok(t.transpose(1, 2)?
            .contiguous()?
            .reshape((self.tokens(), heads * d))?)
    }

    fn output_norm(&self, second: bool) -> Option<&Tensor> {
        self.norms
            .outputs
            .as_ref()
            .map(|(a, m)| if second { m } else { a })
    }

    fn qk_norm(&self, key: bool) -> Option<&Tensor> {
        self.norms.qk.as_ref().map(|(q, k)| if key { k } else { q })
    }

    /// q, k and v [tokens, width] of the normed input `h`.
    fn attention_inputs(&self, h: &Tensor) -> Result<[Tensor; 3]> {
        let p = &self.projections;
        if !self.slots.fused {
            return Ok([p[Q].forward(h)?, p[K].forward(h)?, p[V].forward(h)?]);
        }
        let a = &self.attention;
        let (q, kv) = (a.q_heads * a.head_dim, a.kv_heads * a.head_dim);
        let qkv = p[QKV].forward(h)?;
        let part = |at: usize, width: usize| -> Result<Tensor> {
            Ok(qkv.narrow(1, at, width)?.contiguous()?)
        };
        Ok([part(0, q)?, part(q, kv)?, part(q + kv, kv)?])
    }

    /// gate and up [tokens, intermediate] of the normed input `h` (gate_up_proj: gate's rows
    /// first).
    fn mlp_inputs(&self, h: &Tensor) -> Result<[Tensor; 2]> {
        let p = &self.projections;
        if !self.slots.fused {
            return Ok([p[GATE].forward(h)?, p[UP].forward(h)?]);
        }
        let both = p[GATE_UP].forward(h)?;
        let i = both.dim(1)? / 2;
        Ok([
            both.narrow(1, 0, i)?.contiguous()?,
            both.narrow(1, i, i)?.contiguous()?,
        ])
    }

    /// The layer's output for `x` [tokens, hidden], and what the backward pass reads.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Kept)> {
        let mut kept = self.kept(x)?;
        let down = match kept.down_out.take() {
            Some(down) => down,
            None => self.projections[self.slots.down()].forward(&gated(
                &kept.gate,
                &kept.up,
                self.activation,
            )?)?,
        };
        let out = (&kept.mid + normed(down.clone(), self.output_norm(true), self.eps)?)?;
        if self.norms.outputs.is_some() {
            kept.down_out = Some(down);
        }
        Ok((out, kept))
    }

    /// What the backward pass reads for `x` [tokens, hidden]: the forward pass up to gate
    /// and up (what a checkpointed layer recomputes), and down_proj's output only where it
    /// is normed (Llama's layer does not need it).
    fn kept(&self, x: &Tensor) -> Result<Kept> {
        let p = &self.projections;
        let a = &self.attention;
        let (h, _) = rms_norm(x, &self.norms.input, self.eps)?;
        let [q, k, v] = self.attention_inputs(&h)?;
        let q = self.heads(&q, a.q_heads)?;
        let k = self.heads(&k, a.kv_heads)?;
        let (q_normed, k_normed) = (
            normed(q.clone(), self.qk_norm(false), self.eps)?,
            normed(k.clone(), self.qk_norm(true), self.eps)?,
        );
        let qk_raw = self.norms.qk.is_some().then_some((q, k));
        let q = self.rotary.forward(&q_normed)?;
        let k = self.rotary.forward(&k_normed)?;
        let v = self.heads(&v, a.kv_heads)?;
        let (k, v) = match &self.prefix {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        let attn = self.rows(&a.forward(&q, &k, &v)?)?;
        let o = p[self.slots.o()].forward(&attn)?;
        let mid = (x + normed(o.clone(), self.output_norm(false), self.eps)?)?;
        let o_out = self.norms.outputs.is_some().then_some(o);
        let (h, _) = rms_norm(&mid, &self.norms.mlp, self.eps)?;
        let [gate, up] = self.mlp_inputs(&h)?;
        let down_out = match self.norms.outputs {
            Some(_) => Some(p[self.slots.down()].forward(&gated(&gate, &up, self.activation)?)?),
            None => None,
        };
        Ok(Kept {
            q,
            k,
            v,
            qk_raw,
            attn,
            o_out,
            down_out,
            mid,
            gate,
            up,
        })
    }

    /// dL/dx and the gradients of what the projections train (LoRA's A then B, or IA³'s
    /// scale; projection by projection, in the packed tensor's order) for `d_out`
    /// [tokens, hidden].
    fn backward(&self, x: &Tensor, kept: &Kept, d_out: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let p = &self.projections;
        let a = &self.attention;
        let eps = self.eps;
        let slots = self.slots;
        let mut trained = vec![Vec::new(); p.len()];
        let mut through = |i: usize, input: &Tensor, dy: &Tensor| -> Result<Tensor> {
            let (dx, grads) = p[i].backward(input, dy)?;
            trained[i] = grads;
            Ok(dx)
        };
        // MLP.
        let (h2, rstd2) = rms_norm(&kept.mid, &self.norms.mlp, eps)?;
        let act = gated(&kept.gate, &kept.up, self.activation)?;
        let d_down = normed_backward(
            kept.down_out.as_ref(),
            self.output_norm(true),
            eps,
            d_out.clone(),
        )?;
        let d_act = through(slots.down(), &act, &d_down)?;
        let (d_gate, d_up) = gated_backward(&kept.gate, &kept.up, &d_act, self.activation)?;
        let d_h2 = match slots.fused {
            true => through(GATE_UP, &h2, &Tensor::cat(&[&d_gate, &d_up], 1)?)?,
            false => (through(GATE, &h2, &d_gate)? + through(UP, &h2, &d_up)?)?,
        };
        let d_mid = (d_out + rms_norm_backward(&kept.mid, &self.norms.mlp, &rstd2, &d_h2)?)?;
        // Attention.
        let d_o = normed_backward(
            kept.o_out.as_ref(),
            self.output_norm(false),
            eps,
            d_mid.clone(),
        )?;
        let d_attn = self.heads(&through(slots.o(), &kept.attn, &d_o)?, a.q_heads)?;
        let (dq, dk, dv) = a.backward(&kept.q, &kept.k, &kept.v, &d_attn)?;
        // The prefix's part of the keys' and values' gradients, then the layer's own.
        let earlier = a.keys - a.seq;
        let prefix_grads = match self.prefix {
            Some(_) => vec![
                dk.narrow(2, 0, earlier)?.contiguous()?,
                dv.narrow(2, 0, earlier)?.contiguous()?,
            ],
            None => Vec::new(),
        };
        let (dk, dv) = (dk.narrow(2, earlier, a.seq)?, dv.narrow(2, earlier, a.seq)?);
        let (q_raw, k_raw) = match &kept.qk_raw {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let dq = normed_backward(q_raw, self.qk_norm(false), eps, self.rotary.backward(&dq)?)?;
        let dk = normed_backward(k_raw, self.qk_norm(true), eps, self.rotary.backward(&dk)?)?;
        let (dq, dk, dv) = (self.rows(&dq)?, self.rows(&dk)?, self.rows(&dv)?);
        let (h1, rstd1) = rms_norm(x, &self.norms.input, eps)?;
        let d_h1 = match slots.fused {
            true => through(QKV, &h1, &Tensor::cat(&[&dq, &dk, &dv], 1)?)?,
            false => ((through(Q, &h1, &dq)? + through(K, &h1, &dk)?)? + through(V, &h1, &dv)?)?,
        };
        let dx = (d_mid + rms_norm_backward(x, &self.norms.input, &rstd1, &d_h1)?)?;
        let grads = trained.into_iter().flatten().chain(prefix_grads).collect();
        Ok((dx, grads))
    }
}

impl LayerOp {
    /// The backward pass of the op: `x` as candle hands it, `grad` [batch, seq, hidden].
    fn gradients(&self, x: &Tensor, grad: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let hidden = x.dim(2)?;
        let x2 = x.detach().reshape((self.layer.tokens(), hidden))?;
        let d_out = grad
            .reshape((self.layer.tokens(), hidden))?
            .to_dtype(x.dtype())?;
        let kept = match self.kept.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let kept = match kept {
            Some(kept) => kept,
            None => self.layer.kept(&x2)?,
        };
        let (dx, grads) = self.layer.backward(&x2, &kept, &d_out)?;
        Ok((dx.reshape(x.shape())?, grads))
    }
}

impl CustomOp1 for LayerOp {
    fn name(&self) -> &'static str {
        "generic-decoder-layer"
    }

    precomputed_forward!(output; _x _xl);

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (dx, _) = self.gradients(x, grad)?;
        Ok(Some(dx))
    }
}

impl CustomOp2 for LayerOp {
    fn name(&self) -> &'static str {
        "generic-decoder-layer"
    }

    precomputed_forward!(output; _x _xl, _y _yl);

    fn bwd(
        &self,
        x: &Tensor,
        pack: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, grads) = self.gradients(x, grad)?;
        let flat = grads
            .iter()
            .map(|g| g.flatten_all()?.to_dtype(pack.dtype()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((Some(dx), Some(Tensor::cat(&flat, 0)?)))
    }
}

/// The decoder layer for `x` [batch, seq, hidden] on any device; `cos`, `sin` are the
/// layer's rotary tables [seq, head_dim] (a sliding layer's own where the family has them).
pub fn decoder_layer(x: &Tensor, parts: &LayerParts, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, seq, hidden) = x.dims3()?;
    let mut flat = Vec::new();
    let mut projections = Vec::with_capacity(parts.linears.len());
    for ((l, dropout), ia3) in parts
        .linears
        .iter()
        .zip(parts.dropout.iter().copied())
        .zip(parts.ia3.iter().copied())
    {
        let ia3 = match ia3 {
            Some(scale) => {
                flat.push(scale.l.flatten_all()?);
                Some(Ia3 {
                    l: scale.l.detach().flatten_all()?,
                    feedforward: scale.feedforward,
                })
            }
            None => None,
        };
        let lora = match l.lora {
            Some(lora) => {
                flat.push(lora.a.flatten_all()?);
                flat.push(lora.b.flatten_all()?);
                if let Some(m) = lora.magnitude {
                    flat.push(m.flatten_all()?);
                }
                Some(Lora {
                    a: lora.a.detach(),
                    b: lora.b.detach(),
                    scale: lora.scale,
                    dropout,
                    magnitude: lora.magnitude.map(Tensor::detach),
                })
            }
            None => None,
        };
        projections.push(Projection {
            weight: l.weight.clone(),
            bias: l.bias.cloned(),
            lora,
            ia3,
        });
    }
    let slots = Slots::of(projections.len()).ok_or_else(|| {
        crate::error::EngineError::config(
            "model",
            format!(
                "a decoder layer has seven projections, or four fused ones; not {}",
                projections.len()
            ),
        )
    })?;
    let prefix = match parts.prefix {
        Some((k, v)) => {
            flat.push(k.flatten_all()?);
            flat.push(v.flatten_all()?);
            Some((k.detach(), v.detach()))
        }
        None => None,
    };
    let earlier = prefix.as_ref().map_or(Ok(0), |(k, _)| k.dim(2))?;
    let layer = Layer {
        projections,
        slots,
        prefix,
        norms: Norms::new(parts)?,
        activation: parts.activation,
        rotary: Rotary::new(cos, sin)?,
        eps: parts.eps,
        attention: Attention {
            batch,
            q_heads: parts.q_heads,
            kv_heads: parts.kv_heads,
            seq,
            keys: earlier + seq,
            head_dim: parts.head_dim,
            scores_per_block: super::attention::SCORES_PER_BLOCK,
            attend: parts.attend,
        },
    };
    let (out, kept) = layer.forward(&x.detach().reshape((batch * seq, hidden))?)?;
    let out = out.reshape((batch, seq, hidden))?;
    if flat.is_empty() && !x.track_op() {
        // No gradient flows through this layer: no node.
        return Ok(out);
    }
    let op = LayerOp {
        layer,
        output: Precomputed::new(out),
        kept: Mutex::new((!parts.recompute).then_some(kept)),
    };
    Ok(if flat.is_empty() {
        x.apply_op1(op)?
    } else {
        x.apply_op2(&Tensor::cat(&flat, 0)?, op)?
    })
}
