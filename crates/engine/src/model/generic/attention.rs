//! Causal grouped-query attention in blocks of queries, forward and backward, from candle
//! tensor ops. A block of queries meets only the keys up to its last position, and no
//! pass holds more than one block's scores: [batch, q_heads, block, keys] in f32, with the
//! block sized to keep that under [`SCORES_PER_BLOCK`]. The backward pass recomputes a
//! block's probabilities instead of keeping them.

use candle_core::{CustomOp3, DType, Device, Tensor, D};

use crate::error::Result;
use crate::model::attend::Attend;
use crate::model::reentry::{precomputed_forward, Precomputed};

/// Most score elements one block of queries holds by default (64 MiB in f32).
pub const SCORES_PER_BLOCK: usize = 1 << 24;

/// The shape of an attention call.
#[derive(Debug, Clone, Copy)]
pub struct Attention {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key and value heads (a divisor of `q_heads`).
    pub kv_heads: usize,
    /// Queries per sequence.
    pub seq: usize,
    /// Keys per sequence: the queries' own last, after any earlier ones (a prefix, a cache).
    pub keys: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Most score elements a block of queries may hold ([`SCORES_PER_BLOCK`]).
    pub scores_per_block: usize,
    /// The scores' factor and a sliding layer's window.
    pub attend: Attend,
}

/// One block's operands, the query heads of a key head stacked along the rows so one
/// product serves the group without repeating keys.
struct Block {
    start: usize,
    len: usize,
    /// Queries [batch, kv_heads, group · len, head_dim].
    q: Tensor,
    /// Keys and values up to the block's last position [batch, kv_heads, offset + start + len,
    /// head_dim].
    k: Tensor,
    v: Tensor,
}

impl Attention {
    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// Keys before the first query's own.
    fn offset(&self) -> usize {
        self.keys - self.seq
    }

    /// The queries of each block: a multiple of 16 that keeps the scores under budget.
    fn block_len(&self) -> usize {
        let per_query = (self.batch * self.q_heads * self.keys).max(1);
        let len = (self.scores_per_block / per_query).max(16) / 16 * 16;
        len.min(self.seq).max(1)
    }

    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (seq, len) = (self.seq, self.block_len());
        (0..seq.div_ceil(len)).map(move |i| (i * len, len.min(seq - i * len)))
    }

    /// A block of rows [batch, q_heads, seq, head_dim] → [batch, kv_heads, group · len, d].
    fn stack(&self, t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let (b, hkv, d) = (self.batch, self.kv_heads, self.head_dim);
        Ok(t.narrow(2, start, len)?
            .contiguous()?
            .reshape((b, hkv, self.group() * len, d))?)
    }

    /// [batch, kv_heads, group · len, d] → [batch, q_heads, len, d].
    fn unstack(&self, t: &Tensor, len: usize) -> Result<Tensor> {
        Ok(t.reshape((self.batch, self.q_heads, len, self.head_dim))?)
    }

    fn block(&self, q: &Tensor, k: &Tensor, v: &Tensor, start: usize, len: usize) -> Result<Block> {
        let keys = self.offset() + start + len;
        Ok(Block {
            start,
            len,
            q: self.stack(q, start, len)?,
            k: k.narrow(2, 0, keys)?.contiguous()?,
            v: v.narrow(2, 0, keys)?.contiguous()?,
        })
    }

    /// The block's attention probabilities in f32 [batch, kv_heads, group · len, keys], and
    /// where the scores are soft-capped, the cap's derivative `1 − tanh²` (same shape).
    fn probs(&self, blk: &Block) -> Result<(Tensor, Option<Tensor>)> {
        let (offset, keys) = (self.offset(), self.offset() + blk.start + blk.len);
        let scores = (blk.q.matmul(&blk.k.t()?)?.to_dtype(DType::F32)? * self.attend.scale)?;
        let (scores, slope) = match self.attend.softcap {
            Some(cap) => {
                let t = (scores / cap)?.tanh()?;
                let slope = t.sqr()?.affine(-1.0, 1.0)?;
                ((t * cap)?, Some(slope))
            }
            None => (scores, None),
        };
        let attend = self.attend;
        let mask: Vec<f32> = (0..blk.len)
            .flat_map(|r| {
                let pos = offset + blk.start + r;
                (0..keys).map(move |j| {
                    if j <= pos && j >= attend.first_key(pos) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask =
            Tensor::from_vec(mask, (blk.len, keys), &Device::Cpu)?.to_device(blk.q.device())?;
        let (b, hkv, g) = (self.batch, self.kv_heads, self.group());
        let scores = scores
            .reshape((b, hkv, g, blk.len, keys))?
            .broadcast_add(&mask)?;
        Ok((
            candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, hkv, g * blk.len, keys))?,
            slope,
        ))
    }

    /// Attention of `q` [batch, q_heads, seq, d] over `k`, `v` [batch, kv_heads, keys, d]:
    /// [batch, q_heads, seq, d] in `q`'s dtype.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let mut out = Vec::new();
        for (start, len) in self.blocks() {
            let blk = self.block(q, k, v, start, len)?;
            let p = self.probs(&blk)?.0.to_dtype(q.dtype())?;
            out.push(self.unstack(&p.matmul(&blk.v)?, len)?);
        }
        Ok(Tensor::cat(&out, 2)?)
    }

    /// dL/dq, dL/dk, dL/dv for `d_out` [batch, q_heads, seq, d], each in its input's dtype.
    pub fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let dtype = q.dtype();
        let scale = self.attend.scale;
        let kv_shape = (self.batch, self.kv_heads, self.keys, self.head_dim);
        let mut dk = Tensor::zeros(kv_shape, DType::F32, q.device())?;
        let mut dv = Tensor::zeros(kv_shape, DType::F32, q.device())?;
        let mut dq = Vec::new();
        for (start, len) in self.blocks() {
            let blk = self.block(q, k, v, start, len)?;
            let d_o = self.stack(d_out, start, len)?;
            let (p, slope) = self.probs(&blk)?;
            let p_low = p.to_dtype(dtype)?;
            let pad = self.keys - (self.offset() + start + len);
            let dv_part = p_low.t()?.matmul(&d_o)?.to_dtype(DType::F32)?;
            dv = (dv + dv_part.pad_with_zeros(2, 0, pad)?)?;
            let dp = d_o.matmul(&blk.v.t()?)?.to_dtype(DType::F32)?;
            // dS = P ∘ (dP − rowsum(P ∘ dP)), scaled as the scores were.
            let delta = (&p * &dp)?.sum_keepdim(D::Minus1)?;
            let ds = (p * dp.broadcast_sub(&delta)?)?;
            // Through the soft cap: d score = d capped · (1 − tanh²).
            let ds = match slope {
                Some(slope) => (ds * slope)?,
                None => ds,
            };
            let ds = (ds * scale)?.to_dtype(dtype)?;
            dq.push(self.unstack(&ds.matmul(&blk.k)?, len)?);
            let dk_part = ds.t()?.matmul(&blk.q)?.to_dtype(DType::F32)?;
            dk = (dk + dk_part.pad_with_zeros(2, 0, pad)?)?;
        }
        Ok((
            Tensor::cat(&dq, 2)?,
            dk.to_dtype(k.dtype())?,
            dv.to_dtype(v.dtype())?,
        ))
    }
}

/// Attention as one op of the graph, for the decoder layers that compose single ops (other
/// methods than plain LoRA): it keeps q, k and v, never the scores.
struct AttentionOp {
    shape: Attention,
    output: Precomputed,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "generic-causal-attention"
    }

    precomputed_forward!(output; _x _xl, _y _yl, _z _zl);

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.shape.backward(
            &q.detach(),
            &k.detach(),
            &v.detach(),
            &grad.to_dtype(q.dtype())?,
        )?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal grouped-query attention of `q` [batch, q_heads, seq, d] over `k`, `v`
/// [batch, kv_heads, keys, d] (the queries' own keys last), in blocks of queries:
/// [batch, q_heads, seq, d].
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, attend: Attend) -> Result<Tensor> {
    let (batch, q_heads, seq, head_dim) = q.dims4()?;
    let (kv_heads, keys) = (k.dim(1)?, k.dim(2)?);
    let shape = Attention {
        batch,
        q_heads,
        kv_heads,
        seq,
        keys,
        head_dim,
        scores_per_block: SCORES_PER_BLOCK,
        attend,
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let out = shape.forward(&q.detach(), &k.detach(), &v.detach())?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    let op = AttentionOp {
        shape,
        output: Precomputed::new(out),
    };
    Ok(q.apply_op3(&k, &v, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = crate::ops::SplitMix64::new(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    /// Three blocks (16, 16 and 8 queries) give what one block of all 40 gives, in both
    /// passes, with and without earlier keys: the causal cut and the keys' gradient summed
    /// over blocks are right.
    #[test]
    fn blocks_of_queries_equal_one_block() -> Result<()> {
        let shape = |scores_per_block, keys| Attention {
            batch: 2,
            q_heads: 4,
            kv_heads: 2,
            seq: 40,
            keys,
            head_dim: 8,
            scores_per_block,
            attend: Attend::causal(8),
        };
        // Earlier keys (a prefix) every query sees, or none.
        for earlier in [0, 5] {
            let keys = 40 + earlier;
            let (blocked, whole) = (
                shape(2 * 4 * keys * 16, keys),
                shape(SCORES_PER_BLOCK, keys),
            );
            assert_eq!(
                blocked.blocks().collect::<Vec<_>>(),
                [(0, 16), (16, 16), (32, 8)]
            );
            assert_eq!(whole.blocks().count(), 1);
            let q = random((2, 4, 40, 8), 1);
            let (k, v) = (random((2, 2, keys, 8), 2), random((2, 2, keys, 8), 3));
            let d_out = random((2, 4, 40, 8), 4);
            let out = blocked.forward(&q, &k, &v)?;
            assert!(max_diff(&out, &whole.forward(&q, &k, &v)?) < 1e-5);
            let a = blocked.backward(&q, &k, &v, &d_out)?;
            let b = whole.backward(&q, &k, &v, &d_out)?;
            assert!(max_diff(&a.0, &b.0) < 1e-5, "dq");
            assert!(max_diff(&a.1, &b.1) < 1e-5, "dk");
            assert!(max_diff(&a.2, &b.2) < 1e-5, "dv");
            // The last query sees every key: its output is the plain softmax average.
            let scores = (q
                .narrow(2, 39, 1)?
                .narrow(1, 0, 1)?
                .matmul(&k.narrow(1, 0, 1)?.t()?)?
                / (8f64).sqrt())?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let expected = p.matmul(&v.narrow(1, 0, 1)?)?;
            assert!(max_diff(&out.narrow(2, 39, 1)?.narrow(1, 0, 1)?, &expected) < 1e-5);
        }
        Ok(())
    }
}
