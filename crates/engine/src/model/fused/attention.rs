//! Causal grouped-query attention as one op: scores, causal mask, softmax and the weighted
//! sum of values per head. The backward pass recomputes each head's scores (as flash
//! attention does) instead of keeping them, so a layer keeps only its queries, keys, values
//! and output: no [heads, seq, seq] tensors at all, forward or backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::math;
use super::matmul::{matmul, Mat};
use super::view::{output, storage_slice, tensor, view};
use crate::error::Result;
use crate::model::attend::Attend;

#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    /// Query positions.
    seq: usize,
    /// Key positions: cached or prefix keys first, then one per query.
    keys: usize,
    head_dim: usize,
    /// Keys a query sees, its own included (a sliding-window layer).
    window: Option<usize>,
    /// Scores become `cap · tanh(score / cap)` (Gemma 2).
    softcap: Option<f32>,
}

impl Dims {
    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// Keys query `i` may see: every key up to its own position.
    fn visible(&self, i: usize) -> usize {
        (self.keys - self.seq + i + 1).min(self.keys)
    }

    /// The first key query `i` sees: past a sliding window's reach, none before it.
    fn first(&self, i: usize) -> usize {
        self.window
            .map_or(0, |w| (self.keys - self.seq + i + 1).saturating_sub(w))
    }

    fn q_head<'a>(&self, q: &'a [f32], b: usize, h: usize) -> &'a [f32] {
        let n = self.seq * self.head_dim;
        &q[(b * self.q_heads + h) * n..][..n]
    }

    fn kv_head<'a>(&self, kv: &'a [f32], b: usize, g: usize) -> &'a [f32] {
        let n = self.keys * self.head_dim;
        &kv[(b * self.kv_heads + g) * n..][..n]
    }
}

pub(super) struct Attention {
    dims: Dims,
    scale: f32,
}

/// Query rows per block: a block computes scores only for the keys its last row sees, so
/// the causal mask's upper triangle is mostly skipped rather than computed and zeroed.
const BLOCK: usize = 64;

impl Attention {
    /// Attention of `seq` queries over `keys` keys (`keys ≥ seq`, see [`causal_attention`]).
    pub(super) fn new(
        batch: usize,
        (q_heads, kv_heads, head_dim): (usize, usize, usize),
        seq: usize,
        keys: usize,
        attend: Attend,
    ) -> Self {
        let dims = Dims {
            batch,
            q_heads,
            kv_heads,
            seq,
            keys,
            head_dim,
            window: attend.window,
            softcap: attend.softcap.map(|c| c as f32),
        };
        Self {
            dims,
            scale: attend.scale as f32,
        }
    }

    /// `(first row, end row, visible keys)` per block of query rows.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let s = self.dims.seq;
        (0..s).step_by(BLOCK).map(move |r0| {
            let r1 = (r0 + BLOCK).min(s);
            (r0, r1, self.dims.visible(r1 - 1))
        })
    }

    /// `softmax(scale · Q·Kᵀ + causal mask)` for head `h` of example `b`, [seq, keys]
    /// (entries a row cannot see are 0), soft-capped first where the layer is; with
    /// `slopes`, also the cap's derivative `1 − tanh²` per entry, for the backward pass.
    fn probabilities(
        &self,
        q: &[f32],
        k: &[f32],
        b: usize,
        h: usize,
        slopes: bool,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let dm = self.dims;
        let (s, t, d) = (dm.seq, dm.keys, dm.head_dim);
        let mut p = vec![0.0f32; s * t];
        let qh = dm.q_head(q, b, h);
        let kg = dm.kv_head(k, b, h / dm.group());
        for (r0, r1, vis) in self.blocks() {
            let qb = Mat::rows(&qh[r0 * d..], r1 - r0, d, d);
            let kb = Mat::rows(kg, vis, d, d);
            // `p` is freshly zeroed: accumulate (see `matmul`).
            matmul(&mut p[r0 * t..], t, qb, kb.t(), self.scale, true);
        }
        let mut slope = (slopes && dm.softcap.is_some()).then(|| vec![0.0f32; s * t]);
        if let Some(cap) = dm.softcap {
            for (i, row) in p.chunks_exact_mut(t).enumerate() {
                let live = &mut row[..dm.visible(i)];
                for (j, x) in live.iter_mut().enumerate() {
                    let th = math::tanh(*x / cap);
                    *x = cap * th;
                    if let Some(sl) = slope.as_mut() {
                        sl[i * t + j] = 1.0 - th * th;
                    }
                }
            }
        }
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            math::softmax_row(row, dm.first(i), dm.visible(i));
        }
        (p, slope)
    }

    /// The output [batch, seq, q_heads, head_dim] for queries [batch, q_heads, seq, head_dim]
    /// and keys and values [batch, kv_heads, keys, head_dim].
    pub(super) fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let dm = self.dims;
        let (s, t, d) = (dm.seq, dm.keys, dm.head_dim);
        let heads: Vec<Vec<f32>> = (0..dm.batch * dm.q_heads)
            .into_par_iter()
            .map(|job| {
                let (b, h) = (job / dm.q_heads, job % dm.q_heads);
                let (p, _) = self.probabilities(q, k, b, h, false);
                let vg = dm.kv_head(v, b, h / dm.group());
                let mut out = vec![0.0f32; s * d];
                for (r0, r1, vis) in self.blocks() {
                    let pb = Mat::rows(&p[r0 * t..], r1 - r0, vis, t);
                    matmul(
                        &mut out[r0 * d..],
                        d,
                        pb,
                        Mat::rows(vg, vis, d, d),
                        1.0,
                        true,
                    );
                }
                out
            })
            .collect();
        // Scatter into [batch, seq, heads, head_dim], so o_proj reads it without a copy.
        let mut out = vec![0.0f32; dm.batch * s * dm.q_heads * d];
        out.par_chunks_mut(dm.q_heads * d)
            .enumerate()
            .for_each(|(row, dst)| {
                let (b, i) = (row / s, row % s);
                for (h, part) in dst.chunks_exact_mut(d).enumerate() {
                    part.copy_from_slice(&heads[b * dm.q_heads + h][i * d..][..d]);
                }
            });
        out
    }

    /// Gradients of queries, keys and values, one job per (example, key head): the query
    /// heads of a group share their key head's gradient.
    pub(super) fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        o: &[f32],
        grad: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let dm = self.dims;
        let (s, t, d, group) = (dm.seq, dm.keys, dm.head_dim, dm.group());
        let mut dq = vec![0.0f32; q.len()];
        let mut dk = vec![0.0f32; k.len()];
        let mut dv = vec![0.0f32; v.len()];
        dq.par_chunks_mut(group * s * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(job, ((dq, dk), dv))| {
                let (b, g) = (job / dm.kv_heads, job % dm.kv_heads);
                let (kg, vg) = (dm.kv_head(k, b, g), dm.kv_head(v, b, g));
                let mut ds = vec![0.0f32; s * t];
                for (hh, dq) in dq.chunks_exact_mut(s * d).enumerate() {
                    let h = g * group + hh;
                    let (p, slope) = self.probabilities(q, k, b, h, true);
                    let qh = dm.q_head(q, b, h);
                    let row0 = (b * s * dm.q_heads + h) * d;
                    let rs = dm.q_heads * d;
                    for (r0, r1, vis) in self.blocks() {
                        let n = r1 - r0;
                        let dout = Mat::rows(&grad[row0 + r0 * rs..], n, d, rs);
                        let pb = Mat::rows(&p[r0 * t..], n, vis, t);
                        // dV += Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP − rowsum(dO ⊙ O)).
                        matmul(dv, d, pb.t(), dout, 1.0, true);
                        let vb = Mat::rows(vg, vis, d, d);
                        matmul(&mut ds[r0 * t..], t, dout, vb.t(), 1.0, false);
                        for i in r0..r1 {
                            let at = row0 + i * rs;
                            let delta: f32 = grad[at..][..d]
                                .iter()
                                .zip(&o[at..][..d])
                                .map(|(a, b)| a * b)
                                .sum();
                            let row = &mut ds[i * t..][..vis];
                            for (x, pr) in row.iter_mut().zip(&p[i * t..][..vis]) {
                                *x = pr * (*x - delta);
                            }
                            // Through the soft cap: d score = d capped · (1 − tanh²).
                            if let Some(sl) = &slope {
                                row.iter_mut()
                                    .zip(&sl[i * t..][..vis])
                                    .for_each(|(x, d)| *x *= d);
                            }
                        }
                        // dQ = scale·dS·K; dK += scale·dSᵀ·Q.
                        let dsb = Mat::rows(&ds[r0 * t..], n, vis, t);
                        let kb = Mat::rows(kg, vis, d, d);
                        matmul(&mut dq[r0 * d..], d, dsb, kb, self.scale, true);
                        let qb = Mat::rows(&qh[r0 * d..], n, d, d);
                        matmul(dk, d, dsb.t(), qb, self.scale, true);
                    }
                }
            });
        (dq, dk, dv)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dtype = q.dtype();
        let (q, k, v) = (
            storage_slice(q, lq)?,
            storage_slice(k, lk)?,
            storage_slice(v, lv)?,
        );
        let dm = self.dims;
        Ok(output(
            self.forward(&q, &k, &v),
            (dm.batch, dm.seq, dm.q_heads, dm.head_dim),
            dtype,
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dq, dk, dv) =
            self.backward(&view(q)?, &view(k)?, &view(v)?, &view(res)?, &view(&grad)?);
        Ok((
            Some(tensor(dq, q)?),
            Some(tensor(dk, k)?),
            Some(tensor(dv, v)?),
        ))
    }
}

/// `softmax(scale · Q·Kᵀ + causal mask)·V` (a sliding window's mask too, see [`Attend`]) for queries [batch, q_heads, seq, head_dim] and keys
/// and values [batch, kv_heads, keys, head_dim] (`keys ≥ seq`: the last `seq` keys belong to
/// the queries, earlier ones are cached or prefix positions every query sees). Query head `h`
/// reads key head `h / (q_heads / kv_heads)`. Returns [batch, seq, q_heads, head_dim].
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, attend: Attend) -> Result<Tensor> {
    let (batch, q_heads, seq, head_dim) = q.dims4()?;
    let (_, kv_heads, keys, _) = k.dims4()?;
    let op = Attention::new(batch, (q_heads, kv_heads, head_dim), seq, keys, attend);
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}
