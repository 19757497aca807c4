//! A whole decoder layer as one autograd node on any device: RMSNorm, q/k/v (apart, or one
//! `qkv_proj` split after the product: Phi-3; with each head's RMSNorm where the family has
//! one: Qwen3, Gemma 3) and RoPE (on a head's leading dimensions only where the family says:
//! Phi-4-mini), blocked attention with
//! the family's score factor, soft cap and window, o_proj (its output normed in Gemma) and
//! the residual sum, RMSNorm, gate/up (or one `gate_up_proj`), SwiGLU or GeGLU, down_proj (normed in Gemma) and the
//! residual sum, with the LoRA (or DoRA) branches or IA³ scales of any of the projections,
//! prefix tuning's keys and values before the layer's own, or bottleneck adapters where the
//! sublayers join the stream; or with its weights and norms trained (freeze, full
//! fine-tuning). Norm weights are applied as `w + offset` in f32 (Gemma's `1 + w`).
//!
//! The forward pass runs outside candle's graph and re-enters it as one op
//! (`reentry::Precomputed`) whose backward pass is written here. It keeps the roped q and
//! k, v, the attention output, the residual stream between the sublayers and gate/up
//! (about 2·hidden + 2·(q+kv width) + 2·intermediate values per token), and where the family
//! has them the q/k heads before their norms and the two sublayers' outputs before theirs;
//! with gradient checkpointing only the input, and the backward pass runs the forward pass
//! again. The norms and the activation are recomputed from what is kept. The adapters'
//! parameters reach it as one packed tensor, as in `fused::layer`; trained base tensors
//! through `handoff`, without a copy.

use std::sync::Mutex;

use candle_core::Tensor;
use candle_core::{CustomOp1, CustomOp2};

use super::attention::Attention;
use super::bottleneck::Adapter;
use super::elementwise::{gated, gated_backward, Rotary};
use super::handoff::{self, handed};
use super::norms::{normed, normed_backward, Norm, Norms};
use super::projection::{Ia3, Lora, Projection, Trained};
use crate::error::Result;
use crate::model::adapters::bottleneck::Site;
use crate::model::base_weight::BaseWeight;
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
    /// o_proj's and down_proj's outputs [tokens, hidden], where the family norms them or an
    /// adapter reads them.
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

struct Layer {
    projections: Vec<Projection>,
    slots: Slots,
    /// Prefix tuning's keys and values, seen by every query before its own.
    prefix: Option<(Tensor, Tensor)>,
    /// Bottleneck adapters after attention and after the MLP.
    adapters: [Option<Adapter>; 2],
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
    /// Whether the pack ends with the token that carries trained base tensors (`handoff`).
    hands_off: bool,
}

/// The slot of a site's adapter in `Layer::adapters`.
fn site_index(site: Site) -> usize {
    match site {
        Site::Attention => 0,
        Site::Output => 1,
    }
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

    fn output_norm(&self, second: bool) -> Option<&Norm> {
        self.norms
            .outputs
            .as_ref()
            .map(|(a, m)| if second { m } else { a })
    }

    fn qk_norm(&self, key: bool) -> Option<&Norm> {
        self.norms.qk.as_ref().map(|(q, k)| if key { k } else { q })
    }

    fn adapter(&self, site: Site) -> Option<&Adapter> {
        self.adapters[site_index(site)].as_ref()
    }

    /// Whether the backward pass reads the raw output of the sublayer at `site`: the
    /// family norms it, or an adapter reads it.
    fn keeps_output(&self, site: Site) -> bool {
        self.norms.outputs.is_some() || self.adapter(site).is_some()
    }

    /// The stream after the sublayer at `site`, whose raw output is `out` and input `r`.
    fn join(&self, site: Site, out: Tensor, r: &Tensor) -> Result<Tensor> {
        let h = normed(out, self.output_norm(site == Site::Output), self.eps)?;
        Ok(match self.adapter(site) {
            Some(adapter) => adapter.forward(&h, r)?,
            None => (r + h)?,
        })
    }

    /// dL/d(raw output), dL/dr and the adapter's gradients (none without one) of
    /// [`Self::join`] for `dy`, `out` kept where [`Self::keeps_output`].
    fn join_backward(
        &self,
        site: Site,
        out: Option<&Tensor>,
        r: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
        let norm = self.output_norm(site == Site::Output);
        let (d_h, d_r, grads) = match (self.adapter(site), out) {
            (Some(adapter), Some(out)) => {
                let h = normed(out.clone(), norm, self.eps)?;
                let (d_h, d_r, grads) = adapter.backward(&h, r, dy)?;
                (d_h, d_r, grads.into())
            }
            _ => (dy.clone(), dy.clone(), Vec::new()),
        };
        Ok((normed_backward(out, norm, self.eps, d_h)?, d_r, grads))
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
        let out = self.join(Site::Output, down.clone(), &kept.mid)?;
        if self.keeps_output(Site::Output) {
            kept.down_out = Some(down);
        }
        Ok((out, kept))
    }

    /// What the backward pass reads for `x` [tokens, hidden]: the forward pass up to gate
    /// and up (what a checkpointed layer recomputes), and down_proj's output only where it
    /// is normed or an adapter reads it (Llama's layer does not need it).
    fn kept(&self, x: &Tensor) -> Result<Kept> {
        let p = &self.projections;
        let a = &self.attention;
        let (h, _) = self.norms.input.forward(x, self.eps)?;
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
        let mid = self.join(Site::Attention, o.clone(), x)?;
        let o_out = self.keeps_output(Site::Attention).then_some(o);
        let (h, _) = self.norms.mlp.forward(&mid, self.eps)?;
        let [gate, up] = self.mlp_inputs(&h)?;
        let down_out = match self.keeps_output(Site::Output) {
            true => Some(p[self.slots.down()].forward(&gated(&gate, &up, self.activation)?)?),
            false => None,
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

    /// dL/dx and the gradients of the adapters' parameters, in the packed tensor's order
    /// (each projection's LoRA A then B, or IA³ scale; the prefix's keys and values; the
    /// bottleneck adapters after attention and after the MLP), for `d_out` [tokens, hidden].
    /// Trained base tensors' gradients go to their sinks.
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
        let (h2, rstd2) = self.norms.mlp.forward(&kept.mid, eps)?;
        let act = gated(&kept.gate, &kept.up, self.activation)?;
        let (d_down, d_mid, output_adapter) =
            self.join_backward(Site::Output, kept.down_out.as_ref(), &kept.mid, d_out)?;
        let d_act = through(slots.down(), &act, &d_down)?;
        let (d_gate, d_up) = gated_backward(&kept.gate, &kept.up, &d_act, self.activation)?;
        let d_h2 = match slots.fused {
            true => through(GATE_UP, &h2, &Tensor::cat(&[&d_gate, &d_up], 1)?)?,
            false => (through(GATE, &h2, &d_gate)? + through(UP, &h2, &d_up)?)?,
        };
        let d_mid = (d_mid + self.norms.mlp.backward(&kept.mid, &rstd2, &d_h2)?)?;
        // Attention.
        let (d_o, d_x, attention_adapter) =
            self.join_backward(Site::Attention, kept.o_out.as_ref(), x, &d_mid)?;
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
        let (h1, rstd1) = self.norms.input.forward(x, eps)?;
        let d_h1 = match slots.fused {
            true => through(QKV, &h1, &Tensor::cat(&[&dq, &dk, &dv], 1)?)?,
            false => ((through(Q, &h1, &dq)? + through(K, &h1, &dk)?)? + through(V, &h1, &dv)?)?,
        };
        let dx = (d_x + self.norms.input.backward(x, &rstd1, &d_h1)?)?;
        let grads = trained
            .into_iter()
            .flatten()
            .chain(prefix_grads)
            .chain(attention_adapter)
            .chain(output_adapter)
            .collect();
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
        let mut flat = grads
            .iter()
            .map(|g| g.flatten_all()?.to_dtype(pack.dtype()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if self.hands_off {
            // The token's own gradient: its nodes hand over the real ones.
            flat.push(Tensor::zeros(1, pack.dtype(), pack.device())?);
        }
        Ok((Some(dx), Some(Tensor::cat(&flat, 0)?)))
    }
}

/// The decoder layer for `x` [batch, seq, hidden] on any device; `cos`, `sin` are the
/// layer's rotary tables [seq, head_dim] (a sliding layer's own where the family has them).
pub fn decoder_layer(x: &Tensor, parts: &LayerParts, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, seq, hidden) = x.dims3()?;
    // What the method trains: the adapters' parameters, packed into one tensor; base
    // tensors (freeze, full fine-tuning), handed over.
    let mut flat = Vec::new();
    let mut trained = Vec::new();
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
        let (weight, weight_sink) = match l.weight {
            BaseWeight::Dense(w) => (BaseWeight::Dense(w.detach()), handed(w, &mut trained)),
            quantized => (quantized.clone(), None),
        };
        let trained_parts = Trained {
            weight: weight_sink,
            bias: l.bias.and_then(|b| handed(b, &mut trained)),
        };
        if (trained_parts.weight.is_some() || trained_parts.bias.is_some())
            && (lora.is_some() || ia3.is_some())
        {
            return Err(crate::error::EngineError::config(
                "method",
                "a projection with an adapter keeps its weight frozen",
            ));
        }
        projections.push(Projection {
            weight,
            bias: l.bias.map(Tensor::detach),
            lora,
            ia3,
            trained: trained_parts,
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
    let mut adapters = [None, None];
    for site in [Site::Attention, Site::Output] {
        if let Some(bottleneck) = parts.adapters.and_then(|a| a.at(site)) {
            let (adapter, tensors) = Adapter::new(bottleneck);
            for t in tensors {
                flat.push(t.flatten_all()?);
            }
            adapters[site_index(site)] = Some(adapter);
        }
    }
    let norms = Norms::new(parts, &mut trained)?;
    let dtype = flat.first().map_or(x.dtype(), Tensor::dtype);
    let token = handoff::token(&trained, dtype)?;
    let hands_off = token.is_some();
    flat.extend(token);
    let earlier = prefix.as_ref().map_or(Ok(0), |(k, _)| k.dim(2))?;
    let layer = Layer {
        projections,
        slots,
        prefix,
        adapters,
        norms,
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
        hands_off,
    };
    Ok(if flat.is_empty() {
        x.apply_op1(op)?
    } else {
        x.apply_op2(&Tensor::cat(&flat, 0)?, op)?
    })
}
