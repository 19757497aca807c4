//! Decoding many sequences at once on the CPU (the server, the playground, `generate`): one
//! step takes the new tokens of every sequence — a prompt's many, or a decoding sequence's
//! one — through the base model's frozen weights, each sequence with its own keys and values
//! written in place into buffers sized when it starts (`Sequence`: no concatenation per
//! token, no autograd graph) and its own LoRA adapter or none (`RowAdapter`).
//!
//! A sequence decodes the same tokens alone or batched: decoding rows and short prompts share
//! each weight row through dot products whose every output is the same sum whatever the
//! other rows are (`Weight::forward_by_dots`), and a long prompt runs on its own, through the
//! matrix products.
//! It computes what `LlamaModel::forward` does, for every family in its parts table; what a
//! row cannot hold (`unsupported`) decodes through the model itself.

mod adapter;
mod attention;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use adapter::Lora;
pub use adapter::RowAdapter;
use attention::{head_output, Cached};

use super::view::{decode_view, WeightView};
use super::weight::Weight;
use super::{bf16_matmul, norm, swiglu};
use crate::error::{EngineError, Result};
use crate::model::blocks::applied_norm_weight;
use crate::model::linear::Linear;
use crate::model::LlamaModel;

/// Why the decoder cannot run `model` (with what is attached to it), if it cannot: it
/// computes frozen CPU weights with plain LoRA branches.
pub fn unsupported(model: &LlamaModel) -> Option<String> {
    let why = |s: &str| Some(s.to_string());
    if !model.device.is_cpu() || super::kernels() != super::Kernels::Cpu {
        return why("the batched decoder runs on the CPU's kernels only");
    }
    if !matches!(model.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return why("the batched decoder takes f32, bf16 or f16 models");
    }
    if model.prompt.is_some() {
        return why("prompt tuning's virtual tokens are not decoded in batches");
    }
    if model.prefix.is_some() {
        return why("prefix tuning's keys and values are not decoded in batches");
    }
    if model
        .adapters
        .iter()
        .any(|a| a.attention.is_some() || a.output.is_some())
    {
        return why("bottleneck adapters are not decoded in batches");
    }
    let linears = model.layers.iter().flat_map(|b| b.linears());
    for l in linears.chain([&model.lm_head]) {
        if l.ia3.is_some() {
            return why("IA³ is not decoded in batches");
        }
        if l.lora.as_ref().is_some_and(|lo| lo.magnitude.is_some()) {
            return why("DoRA is not decoded in batches");
        }
        if l.weight.is_variable() || l.bias.as_ref().is_some_and(|b| b.is_variable()) {
            return why("trained base weights are not decoded in batches");
        }
    }
    None
}

/// A frozen projection as the decoder reads it.
struct Proj<'m> {
    view: WeightView<'m>,
    bias: Option<Vec<f32>>,
    fan_in: usize,
    out: usize,
}

impl<'m> Proj<'m> {
    fn of(l: &'m Linear) -> Result<Self> {
        let (out, fan_in) = l.weight.dims();
        let bias = l.bias.as_ref().map(floats).transpose()?;
        Ok(Self {
            view: decode_view(&l.weight)?,
            bias,
            fan_in,
            out,
        })
    }
}

/// One decoder layer's norms (as applied, `w + offset`, in f32) and projections in
/// `Block::linears` order: the attention's input (q, k, v or one qkv), o, the MLP's input
/// (gate, up or one gate_up), down.
struct LayerWeights<'m> {
    input_norm: Vec<f32>,
    post_attention_norm: Vec<f32>,
    feedforward_norms: Option<(Vec<f32>, Vec<f32>)>,
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    projs: Vec<Proj<'m>>,
    /// How many of `projs` are the attention's input.
    attn_in: usize,
}

/// A prompt of at most this many tokens joins the step's shared dot products; a longer one
/// runs alone through the matrix products (faster for many rows, but their sums depend on
/// the rows). Either way, what a sequence computes depends on its own tokens only.
const SHARED_TOKENS: usize = 64;

/// How a step's products run: decoding rows and short prompts through per-output dot
/// products (the same sums however many rows), a long prompt alone through the matrix
/// products.
#[derive(Clone, Copy, PartialEq)]
enum Products {
    Dots,
    Matrix,
}

/// A sequence's keys and values, its length and its adapter.
pub struct Sequence {
    /// Per layer: [kv_heads, capacity, head_dim].
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    capacity: usize,
    len: usize,
    adapter: Option<Arc<RowAdapter>>,
}

impl Sequence {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can still take.
    pub fn room(&self) -> usize {
        self.capacity - self.len
    }
}

/// One row of a step: where its tokens are in the step's flat batch.
struct Row<'a> {
    adapter: Option<&'a RowAdapter>,
    offset: usize,
    tokens: usize,
    start: usize,
}

/// The decoder over a loaded model's frozen weights.
pub struct Decoder<'m> {
    model: &'m LlamaModel,
    layers: Vec<LayerWeights<'m>>,
    norm: Vec<f32>,
    head: Proj<'m>,
}

/// A tensor's elements in f32.
fn floats(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

impl<'m> Decoder<'m> {
    /// Reads `model`'s weights (borrowed, bf16 kept as stored); refuses what
    /// [`unsupported`] names.
    pub fn new(model: &'m LlamaModel) -> Result<Self> {
        if let Some(why) = unsupported(model) {
            return Err(EngineError::config("model", why));
        }
        let offset = model.cfg.family.norm_offset;
        let norm = |t: &Tensor| floats(&applied_norm_weight(t, offset)?);
        let pair = |p: &(Tensor, Tensor)| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((norm(&p.0)?, norm(&p.1)?))
        };
        let layers = model
            .layers
            .iter()
            .map(|b| {
                Ok(LayerWeights {
                    input_norm: norm(&b.input_layernorm)?,
                    post_attention_norm: norm(&b.post_attention_layernorm)?,
                    feedforward_norms: b.feedforward_norms.as_ref().map(pair).transpose()?,
                    qk_norm: b.qk_norm.as_ref().map(pair).transpose()?,
                    projs: b
                        .linears()
                        .into_iter()
                        .map(Proj::of)
                        .collect::<Result<_>>()?,
                    attn_in: b.attn_in.linears().len(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            model,
            layers,
            norm: norm(&model.norm)?,
            head: Proj::of(&model.lm_head)?,
        })
    }

    /// A sequence that can hold `capacity` positions (its prompt and what it may generate),
    /// decoded with `adapter` (made from a model of this base) or the base alone.
    pub fn sequence(&self, capacity: usize, adapter: Option<Arc<RowAdapter>>) -> Result<Sequence> {
        let c = &self.model.cfg;
        if capacity > c.max_position_embeddings {
            return Err(EngineError::config(
                "max_tokens",
                format!(
                    "the prompt and the new tokens ({capacity}) exceed the model's context of {}",
                    c.max_position_embeddings
                ),
            ));
        }
        if let Some(a) = &adapter {
            let fits = a.layers.len() == self.layers.len()
                && a.layers
                    .iter()
                    .zip(&self.layers)
                    .all(|(a, w)| a.len() == w.projs.len());
            if !fits {
                return Err(EngineError::config(
                    "adapter",
                    "was made for a model of another shape",
                ));
            }
        }
        let size = c.num_key_value_heads * capacity * c.head_dim;
        let buffers = || (0..self.layers.len()).map(|_| vec![0.0f32; size]).collect();
        Ok(Sequence {
            keys: buffers(),
            values: buffers(),
            capacity,
            len: 0,
            adapter,
        })
    }

    /// Takes each sequence's new tokens and returns each one's logits [vocab] at its last
    /// new position (soft-capped where the model caps them).
    pub fn step(&self, batch: &mut [(&mut Sequence, &[u32])]) -> Result<Vec<Vec<f32>>> {
        // Inside the thread pool: a step forks and joins some ten times per layer, which from
        // a thread outside the pool each cost a hand-over and a wake-up.
        rayon::scope(|_| self.step_in_pool(batch))
    }

    fn step_in_pool(&self, batch: &mut [(&mut Sequence, &[u32])]) -> Result<Vec<Vec<f32>>> {
        for (s, tokens) in batch.iter() {
            if tokens.is_empty() {
                return Err(EngineError::config("prompt", "is empty"));
            }
            if tokens.len() > s.room() {
                return Err(EngineError::config(
                    "max_tokens",
                    format!(
                        "{} new positions exceed the {} the sequence has room for",
                        tokens.len(),
                        s.room()
                    ),
                ));
            }
        }
        let mut logits: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
        // Decoding rows and short prompts together; each long prompt on its own.
        let (mut ones, mut many) = (Vec::new(), Vec::new());
        for (i, (s, t)) in batch.iter_mut().enumerate() {
            let row = (&mut **s, *t);
            if t.len() <= SHARED_TOKENS {
                ones.push((i, row));
            } else {
                many.push((i, row));
            }
        }
        for (i, row) in many {
            logits[i] = self.run(&mut [row], Products::Matrix)?.pop();
        }
        let (at, mut rows): (Vec<usize>, Vec<_>) = ones.into_iter().unzip();
        if !rows.is_empty() {
            for (i, l) in at.into_iter().zip(self.run(&mut rows, Products::Dots)?) {
                logits[i] = Some(l);
            }
        }
        logits
            .into_iter()
            .map(|l| l.ok_or_else(|| EngineError::config("batch", "a row got no logits")))
            .collect()
    }

    /// The step for `rows`, all through `products`.
    fn run(
        &self,
        batch: &mut [(&mut Sequence, &[u32])],
        products: Products,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.model.cfg;
        let (hidden, d) = (c.hidden_size, c.head_dim);
        let mut ids = Vec::new();
        // Held apart from the sequences, whose buffers the step writes.
        let adapters: Vec<Option<Arc<RowAdapter>>> =
            batch.iter().map(|(s, _)| s.adapter.clone()).collect();
        let rows: Vec<Row> = batch
            .iter()
            .zip(&adapters)
            .map(|((s, t), adapter)| {
                let row = Row {
                    adapter: adapter.as_deref(),
                    offset: ids.len(),
                    tokens: t.len(),
                    start: s.len,
                };
                ids.extend_from_slice(t);
                row
            })
            .collect();
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
        let mut x = floats(&self.model.embed(&ids)?)?;
        let tables = |rope: &crate::model::rope::Rope| -> Vec<(Vec<f32>, Vec<f32>)> {
            rows.iter().map(|r| rope.rows(r.start, r.tokens)).collect()
        };
        let full = tables(&self.model.rope);
        let local = self.model.local_rope.as_ref().map(tables);
        let eps = c.rms_norm_eps as f32;
        for (l, w) in self.layers.iter().enumerate() {
            let h = rms(&x, &w.input_norm, eps);
            let widths = [c.q_dim(), c.kv_dim(), c.kv_dim()];
            let [mut q, mut k, v] = self.inputs(l, 0..w.attn_in, &h, &rows, products, widths)?;
            if let Some((qn, kn)) = &w.qk_norm {
                q = rms(&q, qn, eps);
                k = rms(&k, kn, eps);
            }
            let attend = self.model.attend(l);
            let rotary = match (&local, attend.window.is_some()) {
                (Some(local), true) => local,
                _ => &full,
            };
            for (r, (cos, sin)) in rows.iter().zip(rotary) {
                let span = r.offset * c.q_dim()..(r.offset + r.tokens) * c.q_dim();
                rotate(&mut q[span], (cos, sin), r.tokens, d);
                let span = r.offset * c.kv_dim()..(r.offset + r.tokens) * c.kv_dim();
                rotate(&mut k[span], (cos, sin), r.tokens, d);
            }
            for (r, (s, _)) in rows.iter().zip(batch.iter_mut()) {
                let cap = s.capacity;
                for i in 0..r.tokens {
                    for g in 0..c.num_key_value_heads {
                        let at = (g * cap + r.start + i) * d;
                        let from = (r.offset + i) * c.kv_dim() + g * d;
                        s.keys[l][at..at + d].copy_from_slice(&k[from..from + d]);
                        s.values[l][at..at + d].copy_from_slice(&v[from..from + d]);
                    }
                }
            }
            let attn = self.attention(l, &q, &rows, batch, attend);
            let o = w.attn_in;
            let mut a = self.project(
                &w.projs[o],
                |ad| ad.layers[l][o].as_ref(),
                &attn,
                &rows,
                products,
            );
            let mlp_norm = match &w.feedforward_norms {
                Some((pre, _)) => {
                    a = rms(&a, &w.post_attention_norm, eps);
                    pre
                }
                None => &w.post_attention_norm,
            };
            x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
            let h = rms(&x, mlp_norm, eps);
            let i = c.intermediate_size;
            let [g, u] = self.inputs(l, o + 1..w.projs.len() - 1, &h, &rows, products, [i, i])?;
            let act = swiglu::forward(c.activation, &g, &u);
            let down = w.projs.len() - 1;
            let mut m = self.project(
                &w.projs[down],
                |ad| ad.layers[l][down].as_ref(),
                &act,
                &rows,
                products,
            );
            if let Some((_, post)) = &w.feedforward_norms {
                m = rms(&m, post, eps);
            }
            x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
        }
        for ((s, _), r) in batch.iter_mut().zip(&rows) {
            s.len += r.tokens;
        }
        // The head reads each sequence's last new position only.
        let last: Vec<f32> = rows
            .iter()
            .flat_map(|r| &x[(r.offset + r.tokens - 1) * hidden..][..hidden])
            .copied()
            .collect();
        let heads: Vec<Row> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| Row {
                offset: i,
                tokens: 1,
                ..*r
            })
            .collect();
        let h = rms(&last, &self.norm, eps);
        let mut logits = self.project(&self.head, |a| a.head.as_ref(), &h, &heads, Products::Dots);
        if let Some(cap) = c.final_softcap {
            let cap = cap as f32;
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        Ok(logits
            .chunks_exact(self.head.out)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// The outputs of layer `l`'s projections `which` (apart, or one fused matrix split
    /// along its outputs by `widths`).
    fn inputs<const N: usize>(
        &self,
        l: usize,
        which: std::ops::Range<usize>,
        x: &[f32],
        rows: &[Row],
        products: Products,
        widths: [usize; N],
    ) -> Result<[Vec<f32>; N]> {
        let projs = &self.layers[l].projs;
        let outs: Vec<Vec<f32>> = which
            .clone()
            .map(|p| self.project(&projs[p], |a| a.layers[l][p].as_ref(), x, rows, products))
            .collect();
        let parts = if outs.len() == N {
            outs
        } else {
            // One fused matrix: its output rows are the parts' in order.
            let fused = outs.concat();
            let total: usize = widths.iter().sum();
            let mut at = 0;
            widths
                .iter()
                .map(|&w| {
                    at += w;
                    fused
                        .chunks_exact(total)
                        .flat_map(|row| &row[at - w..at])
                        .copied()
                        .collect()
                })
                .collect()
        };
        parts
            .try_into()
            .map_err(|_| EngineError::config("model", "a split projection lost a part"))
    }

    /// `x·Wᵀ + b` for every row, plus each row's own LoRA branch where its adapter has one.
    fn project<'a>(
        &self,
        p: &Proj,
        branch: impl Fn(&'a RowAdapter) -> Option<&'a Lora>,
        x: &[f32],
        rows: &[Row<'a>],
        products: Products,
    ) -> Vec<f32> {
        let n = x.len() / p.fan_in.max(1);
        let mut y = vec![0.0f32; n * p.out];
        let weight = p.view.weight();
        let dims = (n, p.fan_in, p.out);
        // bf16 matrix products need the CPU's bf16 kernels; dot products widen anywhere.
        let bf16_products = !matches!(weight, Weight::Bf16(_)) || bf16_matmul::available();
        let matrix = products == Products::Matrix && bf16_products;
        if matrix {
            weight.forward(x, &mut y, dims, true);
        } else {
            weight.forward_by_dots(x, &mut y, dims, true);
        }
        if let Some(bias) = &p.bias {
            y.chunks_exact_mut(p.out)
                .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
        }
        for r in rows {
            if let Some(lora) = r.adapter.and_then(&branch) {
                let xs = &x[r.offset * p.fan_in..(r.offset + r.tokens) * p.fan_in];
                let ys = &mut y[r.offset * p.out..(r.offset + r.tokens) * p.out];
                lora.add(xs, ys, p.fan_in, p.out);
            }
        }
        y
    }

    /// Every row's attention output [tokens, q_heads·head_dim] for layer `l`'s queries `q`
    /// over its own cache, one task per (row, query head).
    fn attention(
        &self,
        l: usize,
        q: &[f32],
        rows: &[Row],
        batch: &[(&mut Sequence, &[u32])],
        attend: crate::model::attend::Attend,
    ) -> Vec<f32> {
        let c = &self.model.cfg;
        let (hq, d, q_dim) = (c.num_attention_heads, c.head_dim, c.q_dim());
        let group = hq / c.num_key_value_heads.max(1);
        let heads: Vec<Vec<f32>> = (0..rows.len() * hq)
            .into_par_iter()
            .map(|job| {
                let (r, head) = (&rows[job / hq], job % hq);
                let s = &*batch[job / hq].0;
                let q = &q[r.offset * q_dim..(r.offset + r.tokens) * q_dim];
                let kv = (
                    Cached::new(&s.keys[l], s.capacity, d),
                    Cached::new(&s.values[l], s.capacity, d),
                );
                head_output((q, q_dim), head, head / group, kv, r.start, attend)
            })
            .collect();
        let n: usize = rows.iter().map(|r| r.tokens).sum();
        let mut out = vec![0.0f32; n * q_dim];
        for (job, o) in heads.iter().enumerate() {
            let (r, head) = (&rows[job / hq], job % hq);
            for (i, oi) in o.chunks_exact(d).enumerate() {
                let at = (r.offset + i) * q_dim + head * d;
                out[at..at + d].copy_from_slice(oi);
            }
        }
        out
    }
}

/// RMSNorm of every `w.len()`-wide row of `x` (a token's hidden state, or a head's part of
/// it for q/k norms).
fn rms(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    norm::normalized(x, w, &norm::inv_rms(x, w.len(), eps))
}

/// Rotates every head (`d` wide) of every token of `x` [tokens, heads·d] by its token's
/// `cos`/`sin` row (rotate-half layout, `rotary` ≤ d wide: the rest passes through).
fn rotate(x: &mut [f32], (cos, sin): (&[f32], &[f32]), tokens: usize, d: usize) {
    let rotary = cos.len() / tokens.max(1);
    let per_token = x.len() / tokens.max(1);
    let half = rotary / 2;
    for (t, xt) in x.chunks_exact_mut(per_token).enumerate() {
        let (c, s) = (&cos[t * rotary..][..rotary], &sin[t * rotary..][..rotary]);
        for head in xt.chunks_exact_mut(d) {
            for j in 0..half {
                let (a, b) = (head[j], head[j + half]);
                head[j] = a * c[j] - b * s[j];
                head[j + half] = b * c[j + half] + a * s[j + half];
            }
        }
    }
}
