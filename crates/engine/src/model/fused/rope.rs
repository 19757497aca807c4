//! Rotary embedding fused with the head split: projections [batch, seq, heads, head_dim]
//! come out rotated as [batch, heads, seq, head_dim], in one pass and one buffer (the
//! composed version transposes, copies, slices, negates, concatenates and multiplies).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::view::{output, storage_slice, tensor, view};
use crate::error::Result;

struct Rope {
    /// cos and sin tables [seq, head_dim] in transformers' rotate-half layout.
    cos: Vec<f32>,
    sin: Vec<f32>,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
}

/// `dst = src·cos + sign·rotate_half(src)·sin` for one row; `sign = −1` rotates back
/// (the backward pass: the transpose of a rotation is its inverse).
fn rotate(src: &[f32], dst: &mut [f32], cos: &[f32], sin: &[f32], sign: f32) {
    let half = src.len() / 2;
    for j in 0..half {
        dst[j] = src[j] * cos[j] - sign * src[j + half] * sin[j];
        dst[j + half] = src[j + half] * cos[j + half] + sign * src[j] * sin[j + half];
    }
}

impl Rope {
    fn tables(&self, position: usize) -> (&[f32], &[f32]) {
        let d = self.head_dim;
        (
            &self.cos[position * d..][..d],
            &self.sin[position * d..][..d],
        )
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = storage_slice(x, lx)?;
        let (s, h, d) = (self.seq, self.heads, self.head_dim);
        let mut y = vec![0.0f32; x.len()];
        // One task per (example, head): its [seq, head_dim] block of the output.
        y.par_chunks_mut(s * d).enumerate().for_each(|(job, dst)| {
            let (b, head) = (job / h, job % h);
            for (i, row) in dst.chunks_exact_mut(d).enumerate() {
                let (cos, sin) = self.tables(i);
                rotate(&x[((b * s + i) * h + head) * d..][..d], row, cos, sin, 1.0);
            }
        });
        Ok(output(y, (self.batch, h, s, d)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let g = view(&grad)?;
        let (s, h, d) = (self.seq, self.heads, self.head_dim);
        let mut dx = vec![0.0f32; g.len()];
        // One task per (example, position): its [heads, head_dim] block of the input.
        dx.par_chunks_mut(h * d).enumerate().for_each(|(job, dst)| {
            let (b, i) = (job / s, job % s);
            let (cos, sin) = self.tables(i);
            for (head, row) in dst.chunks_exact_mut(d).enumerate() {
                rotate(&g[((b * h + head) * s + i) * d..][..d], row, cos, sin, -1.0);
            }
        });
        Ok(Some(tensor(dx, x.shape())?))
    }
}

/// Rotates `x` [batch, seq, heads, head_dim] by the tables `cos`, `sin` [seq, head_dim]
/// (`model::rope::Rope::tables`) and returns it as [batch, heads, seq, head_dim].
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, seq, heads, head_dim) = x.dims4()?;
    let op = Rope {
        cos: cos.flatten_all()?.to_vec1()?,
        sin: sin.flatten_all()?.to_vec1()?,
        batch,
        seq,
        heads,
        head_dim,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}
