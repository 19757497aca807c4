//! A whole decoder layer as one op: RMSNorm, q/k/v (apart, or one `qkv_proj` split after the
//! product: Phi-3; q/k normed per head where the family has it) with RoPE (on a head's
//! leading dimensions where the family rotates part of it), causal attention (a sliding
//! window where the layer has one), o_proj and the residual sum, RMSNorm, gate/up (or one
//! `gate_up_proj`), SwiGLU or GeGLU, down_proj and the residual sum, with the LoRA branches
//! of any of the projections; Gemma's norms of the two sublayers' outputs before their
//! residual sums.
//!
//! Built from the single fused ops, a layer is some fifteen autograd nodes, and candle's
//! backward pass gives every node's gradient a zero-filled slot plus an add (the q, k and v
//! gradients of the normed input are three adds, gate and up two): a gigabyte of memory
//! traffic per step for SmolLM2 at 4 × 256 tokens, and its elementwise ops wake a thread
//! pool of their own. Here the layer is one node: its gradients are summed in place (each
//! product accumulates into the buffer of the next), residual sums ride on the products'
//! accumulation, and the activations the backward pass needs are dropped as soon as it has
//! used them. The LoRA matrices reach it as one packed tensor (`Tensor::cat` of the
//! flattened matrices, whose backward hands each matrix its part of the packed gradient).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::attention::Attention;
use super::linear::contiguous;
use super::linear::{LinearParts, LoraSlices, Projection};
use super::norm;
use super::rope::{Heads, Tables};
use super::swiglu;
use super::view::{base_weight_view, output, storage_slice, tensor, view, Floats, WeightView};
use crate::error::Result;
use crate::model::adapters::bottleneck::LayerAdapters;
use crate::model::attend::Attend;
use crate::model::base_weight::BaseWeight;
use crate::model::family::Activation;
use crate::ops::DropoutDraw;

/// The layer's projections, in this order (the generic layer's too).
pub(crate) const Q: usize = 0;
pub(crate) const K: usize = 1;
pub(crate) const V: usize = 2;
pub(crate) const O: usize = 3;
pub(crate) const GATE: usize = 4;
pub(crate) const UP: usize = 5;
pub(crate) const DOWN: usize = 6;
/// Where the family fuses them (Phi-3), qkv and gate_up take q's and gate's places of four.
pub(crate) const QKV: usize = 0;
pub(crate) const GATE_UP: usize = 2;

/// Where each projection sits in a layer's list: seven apart (`Q` … `DOWN`), or four with
/// q/k/v and gate/up fused (`QKV`, o, `GATE_UP`, down).
#[derive(Clone, Copy)]
pub(crate) struct Slots {
    pub fused: bool,
}

impl Slots {
    /// The layout of `count` projections, if it is one.
    pub fn of(count: usize) -> Option<Self> {
        match count {
            7 => Some(Self { fused: false }),
            4 => Some(Self { fused: true }),
            _ => None,
        }
    }

    pub fn o(self) -> usize {
        if self.fused {
            1
        } else {
            O
        }
    }

    pub fn down(self) -> usize {
        if self.fused {
            3
        } else {
            DOWN
        }
    }
}

/// The rows of `x` (each `widths`' sum wide) cut into one matrix per width.
fn columns<const N: usize>(x: &[f32], widths: [usize; N]) -> [Vec<f32>; N] {
    let total = widths.iter().sum::<usize>().max(1);
    let rows = x.len() / total;
    let mut out: [Vec<f32>; N] = std::array::from_fn(|i| Vec::with_capacity(rows * widths[i]));
    for row in x.chunks_exact(total) {
        let mut at = 0;
        for (part, w) in out.iter_mut().zip(widths) {
            part.extend_from_slice(&row[at..at + w]);
            at += w;
        }
    }
    out
}

/// The transpose of [`columns`]: the matrices' rows side by side.
fn joined(parts: &[&[f32]], rows: usize) -> Vec<f32> {
    let widths: Vec<usize> = parts.iter().map(|p| p.len() / rows.max(1)).collect();
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for r in 0..rows {
        for (p, w) in parts.iter().zip(&widths) {
            out.extend_from_slice(&p[r * w..][..*w]);
        }
    }
    out
}

/// Everything a decoder layer is made of, borrowed from the model.
pub struct LayerParts<'a> {
    /// RMSNorm weight before attention [hidden].
    pub input_norm: &'a Tensor,
    /// RMSNorm weight before the MLP [hidden].
    pub post_norm: &'a Tensor,
    /// Gemma's norms of the attention's and the MLP's outputs before their residual sums
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`; the device-generic layer
    /// is given none).
    pub output_norms: Option<(&'a Tensor, &'a Tensor)>,
    /// RMSNorm weights of each query and key head [head_dim] (Qwen3, Gemma 3; the
    /// device-generic layer is given none).
    pub qk_norm: Option<(&'a Tensor, &'a Tensor)>,
    /// Added to every norm weight when applied (Gemma's `1 + w`).
    pub norm_offset: f64,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// The attention's score factor and window.
    pub attend: Attend,
    /// q, k, v, o, gate, up and down, in that order; or, where the family fuses them
    /// (Phi-3), qkv, o, gate_up and down (`Slots`).
    pub linears: Vec<LinearParts<'a>>,
    /// The dropout on each one's LoRA input, when active.
    pub dropout: Vec<Option<DropoutDraw>>,
    /// Each one's IA³ scale, if any (the device-generic layer only: the CPU's fused layer is
    /// given none).
    pub ia3: Vec<Option<&'a crate::model::adapters::ia3::Ia3Scale>>,
    /// Prefix tuning's keys and values for this layer [batch, kv_heads, prefix, head_dim]
    /// (the device-generic layer only).
    pub prefix: Option<(&'a Tensor, &'a Tensor)>,
    /// The layer's bottleneck adapters (the device-generic layer only).
    pub adapters: Option<&'a LayerAdapters>,
    /// RMSNorm's epsilon.
    pub eps: f64,
    /// Query heads.
    pub q_heads: usize,
    /// Key and value heads (a divisor of `q_heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Keep only the input and recompute the rest in the backward pass (gradient
    /// checkpointing): about a third more compute, a fraction of the memory.
    pub recompute: bool,
}

/// Where a projection's LoRA matrices lie in the packed tensor.
#[derive(Clone, Copy)]
struct Packed {
    a: (usize, usize),
    b: (usize, usize),
    scale: f32,
}

impl Packed {
    fn slices(self, pack: &[f32]) -> LoraSlices<'_> {
        LoraSlices {
            a: &pack[self.a.0..][..self.a.1],
            b: &pack[self.b.0..][..self.b.1],
            scale: self.scale,
        }
    }
}

struct Frozen {
    weight: BaseWeight,
    bias: Option<Tensor>,
    lora: Option<Packed>,
    dropout: Option<DropoutDraw>,
}

impl Frozen {
    /// The LoRA branch's input after dropout, and the mask, for this projection's input `x`
    /// (`None` without dropout: the branch reads `x`). The mask is drawn again for the
    /// backward pass rather than kept.
    fn dropped(&self, x: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
        let draw = self.dropout?;
        let cols = self.weight.dims().1.max(1);
        let mask = draw.mask(x.len() / cols, cols);
        let xd = x.iter().zip(&mask).map(|(x, m)| x * m).collect();
        Some((xd, mask))
    }
}

/// A norm's input and its rows' `inv_rms`, kept for its backward pass.
struct NormInput {
    x: Vec<f32>,
    inv: Vec<f32>,
}

impl NormInput {
    fn new(x: Vec<f32>, width: usize, eps: f32) -> Self {
        let inv = norm::inv_rms(&x, width, eps);
        Self { x, inv }
    }

    fn output(&self, w: &[f32]) -> Vec<f32> {
        norm::normalized(&self.x, w, &self.inv)
    }

    /// The input's gradient for the output gradient `g`.
    fn backward(&self, w: &[f32], g: &[f32]) -> Vec<f32> {
        let mut dx = vec![0.0f32; self.x.len()];
        norm::backward(&self.x, w, &self.inv, g, &mut dx, false);
        dx
    }
}

/// What the forward pass keeps for the backward pass; the normed inputs and the gate's
/// output are recomputed instead (one elementwise pass each).
struct Saved {
    inv_rms1: Vec<f32>,
    /// Rotated queries [batch, q_heads, seq, head_dim], keys and values likewise.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output [batch, seq, q_heads · head_dim].
    attn: Vec<f32>,
    /// The residual stream between the two sublayers.
    x2: Vec<f32>,
    inv_rms2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// q and k before their per-head norms.
    qk: Option<(NormInput, NormInput)>,
    /// o_proj's and down_proj's outputs before their norms (Gemma).
    outputs: Option<(NormInput, NormInput)>,
}

struct DecoderLayer {
    linears: Vec<Frozen>,
    slots: Slots,
    /// The norms as applied (offset added), in f32: before attention and before the MLP.
    norms: [Tensor; 2],
    /// The sublayers' output norms (Gemma), as applied.
    output_norms: Option<[Tensor; 2]>,
    /// The per-head q and k norms, as applied.
    qk_norm: Option<[Tensor; 2]>,
    activation: Activation,
    attend: Attend,
    cos: Tensor,
    sin: Tensor,
    eps: f32,
    batch: usize,
    seq: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    recompute: bool,
    saved: Mutex<Option<Saved>>,
}

impl DecoderLayer {
    fn heads(&self, heads: usize) -> Heads {
        Heads {
            batch: self.batch,
            seq: self.seq,
            heads,
            head_dim: self.head_dim,
        }
    }

    fn attention(&self) -> Attention {
        let heads = (self.q_heads, self.kv_heads, self.head_dim);
        Attention::new(self.batch, heads, self.seq, self.seq, self.attend)
    }

    fn forward(&self, x: &[f32], pack: &[f32]) -> candle_core::Result<Vec<f32>> {
        let (y, saved) = self.run(x, pack, true)?;
        if !self.recompute {
            match self.saved.lock() {
                Ok(mut slot) => *slot = Some(saved),
                Err(_) => candle_core::bail!("fused decoder layer: a forward pass panicked"),
            }
        }
        Ok(y)
    }

    /// The layer's output (when `output`; recomputing for the backward pass needs only what
    /// it keeps) and what the backward pass needs.
    fn run(&self, x: &[f32], pack: &[f32], output: bool) -> candle_core::Result<(Vec<f32>, Saved)> {
        let w = self.borrowed()?;
        let p = |i| w.projection(self, i, pack);
        let tables = w.tables();
        let (q_heads, kv_heads) = (self.heads(self.q_heads), self.heads(self.kv_heads));
        let hidden = w.norm1.len();

        let inv_rms1 = norm::inv_rms(x, hidden, self.eps);
        let h1 = norm::normalized(x, &w.norm1, &inv_rms1);
        // Projection i of x into a fresh buffer, or added onto y (a residual sum).
        let lora_input = |i: usize, x: &[f32]| self.linears[i].dropped(x).map(|(xd, _)| xd);
        let fresh = |i: usize, x: &[f32]| {
            let xd = lora_input(i, x);
            p(i).forward_with(x, xd.as_deref().unwrap_or(x))
        };
        let project = |i: usize, x: &[f32], y: &mut [f32]| {
            let xd = lora_input(i, x);
            p(i).add_forward_with(x, xd.as_deref().unwrap_or(x), y);
        };
        let (d, tokens) = (self.head_dim, self.batch * self.seq);
        let [q, k, v] = match self.slots.fused {
            true => {
                let widths = [self.q_heads * d, self.kv_heads * d, self.kv_heads * d];
                columns(&fresh(QKV, &h1), widths)
            }
            false => [fresh(Q, &h1), fresh(K, &h1), fresh(V, &h1)],
        };
        let (q, k, qk) = match &w.qk_norm {
            Some([wq, wk]) => {
                let d = self.head_dim;
                let (q, k) = (
                    NormInput::new(q, d, self.eps),
                    NormInput::new(k, d, self.eps),
                );
                (q.output(wq), k.output(wk), Some((q, k)))
            }
            None => (q, k, None),
        };
        let q = q_heads.split(&q, Some(tables));
        let k = kv_heads.split(&k, Some(tables));
        let v = kv_heads.split(&v, None);
        drop(h1);
        let attn = self.attention().forward(&q, &k, &v);
        let mut x2 = x.to_vec();
        // A sublayer's output joins the residual stream, through its own norm where the
        // family has one (kept for the backward pass).
        let join = |i: usize, input: &[f32], w_out: Option<&Floats>, y: &mut [f32]| match w_out {
            Some(w_out) => {
                let out = NormInput::new(fresh(i, input), hidden, self.eps);
                y.iter_mut()
                    .zip(out.output(w_out))
                    .for_each(|(y, o)| *y += o);
                Some(out)
            }
            None => {
                project(i, input, y);
                None
            }
        };
        let attn_out = join(
            self.slots.o(),
            &attn,
            w.output_norms.as_ref().map(|n| &n[0]),
            &mut x2,
        );

        let inv_rms2 = norm::inv_rms(&x2, hidden, self.eps);
        let h2 = norm::normalized(&x2, &w.norm2, &inv_rms2);
        let [gate, up] = match self.slots.fused {
            true => {
                let both = fresh(GATE_UP, &h2);
                let i = both.len() / tokens.max(1) / 2;
                columns(&both, [i, i])
            }
            false => [fresh(GATE, &h2), fresh(UP, &h2)],
        };
        drop(h2);
        let mut y = Vec::new();
        let mut outputs = None;
        // Without output (recomputing for the backward pass), only a normed down_proj's
        // output is needed.
        if output || w.output_norms.is_some() {
            let act = swiglu::forward(self.activation, &gate, &up);
            y = x2.clone();
            let down_out = join(
                self.slots.down(),
                &act,
                w.output_norms.as_ref().map(|n| &n[1]),
                &mut y,
            );
            outputs = attn_out.zip(down_out);
        }
        let saved = Saved {
            inv_rms1,
            q,
            k,
            v,
            attn,
            x2,
            inv_rms2,
            gate,
            up,
            qk,
            outputs,
        };
        Ok((y, saved))
    }

    /// The input's gradient (when `x_grad`) and the packed LoRA gradient for the output
    /// gradient `dy`.
    fn backward(
        &self,
        x: &[f32],
        x_grad: bool,
        pack: &[f32],
        dy: &[f32],
    ) -> candle_core::Result<(Option<Vec<f32>>, Vec<f32>)> {
        let s = if self.recompute {
            self.run(x, pack, false)?.1
        } else {
            let taken = self.saved.lock().ok().and_then(|mut slot| slot.take());
            let Some(s) = taken else {
                candle_core::bail!("fused decoder layer: backward without its forward pass")
            };
            s
        };
        let w = self.borrowed()?;
        let p = |i| w.projection(self, i, pack);
        let tables = w.tables();
        let (q_heads, kv_heads) = (self.heads(self.q_heads), self.heads(self.kv_heads));
        let mut dpack = vec![0.0f32; pack.len()];
        // Each projection's backward pass, its LoRA gradients put in their packed places.
        let mut back = |i: usize, x: &[f32], g: &[f32], dx: Option<&mut [f32]>| {
            let dropped = self.linears[i].dropped(x);
            let dropped = dropped.as_ref().map(|(xd, m)| (&xd[..], &m[..]));
            let grads = p(i).backward_with(x, dropped, g, dx);
            if let (Some(l), Some((da, db))) = (self.linears[i].lora, grads) {
                dpack[l.a.0..][..l.a.1].copy_from_slice(&da);
                dpack[l.b.0..][..l.b.1].copy_from_slice(&db);
            }
        };

        // A sublayer output's gradient, through its norm where it has one.
        let (attn_out, down_out) = match s.outputs {
            Some((a, d)) => (Some(a), Some(d)),
            None => (None, None),
        };
        let through = |out: &Option<NormInput>, k: usize, g: &[f32]| -> Option<Vec<f32>> {
            let w_out = &w.output_norms.as_ref()?[k];
            Some(out.as_ref()?.backward(w_out, g))
        };

        // MLP: down, the gate, gate and up, the second norm; the residual passes dy on.
        let act = swiglu::forward(self.activation, &s.gate, &s.up);
        let mut dact = vec![0.0f32; act.len()];
        let ddown = through(&down_out, 1, dy);
        let slots = self.slots;
        back(
            slots.down(),
            &act,
            ddown.as_deref().unwrap_or(dy),
            Some(&mut dact),
        );
        drop((act, ddown, down_out));
        let (dgate, dup) = swiglu::backward(self.activation, &s.gate, &s.up, &dact);
        drop((dact, s.gate, s.up));
        let h2 = norm::normalized(&s.x2, &w.norm2, &s.inv_rms2);
        let mut dh2 = vec![0.0f32; h2.len()];
        let tokens = self.batch * self.seq;
        if slots.fused {
            back(
                GATE_UP,
                &h2,
                &joined(&[&dgate, &dup], tokens),
                Some(&mut dh2),
            );
        } else {
            back(GATE, &h2, &dgate, Some(&mut dh2));
            back(UP, &h2, &dup, Some(&mut dh2));
        }
        drop((h2, dgate, dup));
        let mut dx2 = dy.to_vec();
        norm::backward(&s.x2, &w.norm2, &s.inv_rms2, &dh2, &mut dx2, false);
        drop((dh2, s.x2));

        // Attention: o, the attention itself, RoPE, q/k/v, the first norm.
        let mut dattn = vec![0.0f32; s.attn.len()];
        let dout = through(&attn_out, 0, &dx2);
        back(
            slots.o(),
            &s.attn,
            dout.as_deref().unwrap_or(&dx2),
            Some(&mut dattn),
        );
        drop((dout, attn_out));
        let (dq, dk, dv) = self.attention().backward(&s.q, &s.k, &s.v, &s.attn, &dattn);
        drop((dattn, s.q, s.k, s.v, s.attn));
        let mut dq = q_heads.merge(&dq, Some(tables));
        let mut dk = kv_heads.merge(&dk, Some(tables));
        if let (Some((q, k)), Some([wq, wk])) = (&s.qk, &w.qk_norm) {
            dq = q.backward(wq, &dq);
            dk = k.backward(wk, &dk);
        }
        drop(s.qk);
        let dv = kv_heads.merge(&dv, None);
        let h1 = norm::normalized(x, &w.norm1, &s.inv_rms1);
        let mut dh1 = x_grad.then(|| vec![0.0f32; h1.len()]);
        if slots.fused {
            let dqkv = joined(&[&dq, &dk, &dv], tokens);
            back(QKV, &h1, &dqkv, dh1.as_deref_mut());
        } else {
            back(Q, &h1, &dq, dh1.as_deref_mut());
            back(K, &h1, &dk, dh1.as_deref_mut());
            back(V, &h1, &dv, dh1.as_deref_mut());
        }
        let dx = dh1.map(|dh1| {
            norm::backward(x, &w.norm1, &s.inv_rms1, &dh1, &mut dx2, false);
            dx2
        });
        Ok((dx, dpack))
    }
}

/// The layer's frozen tensors borrowed as slices for one pass.
struct Borrowed<'a> {
    weights: Vec<WeightView<'a>>,
    biases: Vec<Option<Floats<'a>>>,
    norm1: Floats<'a>,
    norm2: Floats<'a>,
    output_norms: Option<[Floats<'a>; 2]>,
    qk_norm: Option<[Floats<'a>; 2]>,
    cos: Floats<'a>,
    sin: Floats<'a>,
}

impl DecoderLayer {
    fn borrowed(&self) -> candle_core::Result<Borrowed<'_>> {
        Ok(Borrowed {
            weights: self
                .linears
                .iter()
                .map(|l| base_weight_view(&l.weight))
                .collect::<candle_core::Result<_>>()?,
            biases: self
                .linears
                .iter()
                .map(|l| l.bias.as_ref().map(view).transpose())
                .collect::<candle_core::Result<_>>()?,
            norm1: view(&self.norms[0])?,
            norm2: view(&self.norms[1])?,
            output_norms: self.output_norms.as_ref().map(views).transpose()?,
            qk_norm: self.qk_norm.as_ref().map(views).transpose()?,
            cos: view(&self.cos)?,
            sin: view(&self.sin)?,
        })
    }
}

fn views(pair: &[Tensor; 2]) -> candle_core::Result<[Floats<'_>; 2]> {
    Ok([view(&pair[0])?, view(&pair[1])?])
}

impl Borrowed<'_> {
    fn tables(&self) -> Tables<'_> {
        Tables {
            cos: &self.cos,
            sin: &self.sin,
        }
    }

    /// Projection `i` of `layer`, its LoRA branch read from `pack`.
    fn projection<'a>(&'a self, layer: &DecoderLayer, i: usize, pack: &'a [f32]) -> Projection<'a> {
        let weight = self.weights[i].weight();
        let out = layer.linears[i].weight.dims().0;
        Projection {
            weight,
            bias: self.biases[i].as_deref(),
            lora: layer.linears[i].lora.map(|l| l.slices(pack)),
            fan_in: weight.len() / out.max(1),
            out,
        }
    }
}

impl CustomOp1 for DecoderLayer {
    fn name(&self) -> &'static str {
        "fused-decoder-layer"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.forward(&storage_slice(x, lx)?, &[])?;
        Ok(output(y, lx.shape().clone(), x.dtype()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (dx, _) = self.backward(&view(x)?, x.track_op(), &[], &view(&grad)?)?;
        dx.map(|dx| tensor(dx, x)).transpose()
    }
}

impl CustomOp2 for DecoderLayer {
    fn name(&self) -> &'static str {
        "fused-decoder-layer-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        pack: &CpuStorage,
        lp: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.forward(&storage_slice(x, lx)?, &storage_slice(pack, lp)?)?;
        Ok(output(y, lx.shape().clone(), x.dtype()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        pack: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dpack) = self.backward(&view(x)?, x.track_op(), &view(pack)?, &view(&grad)?)?;
        let dx = dx.map(|dx| tensor(dx, x)).transpose()?;
        Ok((dx, Some(tensor(dpack, pack)?)))
    }
}

/// The decoder layer `parts` applied to `x` [batch, seq, hidden] with the RoPE tables `cos`,
/// `sin` [seq, head_dim]: causal self-attention over the sequence itself (no cache, no
/// prefix). Gradients flow to `x` and to the LoRA matrices.
pub fn decoder_layer(x: &Tensor, parts: &LayerParts, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, seq, _) = x.dims3()?;
    let mut flat = Vec::new();
    let mut offset = 0;
    let mut place = |t: &Tensor| -> Result<(usize, usize)> {
        let n = t.elem_count();
        flat.push(t.flatten_all()?);
        offset += n;
        Ok((offset - n, n))
    };
    let mut linears = Vec::with_capacity(parts.linears.len());
    for (l, dropout) in parts.linears.iter().zip(parts.dropout.iter().copied()) {
        let lora = match l.lora {
            Some(lora) => Some(Packed {
                a: place(lora.a)?,
                b: place(lora.b)?,
                scale: lora.scale as f32,
            }),
            None => None,
        };
        linears.push(Frozen {
            weight: contiguous(l.weight)?,
            bias: l.bias.map(Tensor::contiguous).transpose()?,
            lora,
            dropout: dropout.filter(|_| lora.is_some()),
        });
    }
    let slots = Slots::of(linears.len()).ok_or_else(|| {
        candle_core::Error::Msg("fused decoder layer: seven projections, or four fused".into())
    })?;
    let applied = |w: &Tensor| -> Result<Tensor> {
        Ok(crate::model::blocks::applied_norm_weight(w, parts.norm_offset)?.contiguous()?)
    };
    let pair = |p: Option<(&Tensor, &Tensor)>| -> Result<Option<[Tensor; 2]>> {
        p.map(|(a, b)| Ok([applied(a)?, applied(b)?])).transpose()
    };
    let op = DecoderLayer {
        linears,
        slots,
        norms: [applied(parts.input_norm)?, applied(parts.post_norm)?],
        output_norms: pair(parts.output_norms)?,
        qk_norm: pair(parts.qk_norm)?,
        activation: parts.activation,
        attend: parts.attend,
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        eps: parts.eps as f32,
        batch,
        seq,
        q_heads: parts.q_heads,
        kv_heads: parts.kv_heads,
        head_dim: parts.head_dim,
        recompute: parts.recompute,
        saved: Mutex::new(None),
    };
    let x = x.contiguous()?;
    Ok(if flat.is_empty() {
        x.apply_op1(op)?
    } else {
        x.apply_op2(&Tensor::cat(&flat, 0)?, op)?
    })
}
