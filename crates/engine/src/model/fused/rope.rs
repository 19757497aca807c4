//! Rotary embedding fused with the head split: projections [batch, seq, heads, head_dim]
//! come out rotated as [batch, heads, seq, head_dim], in one pass and one buffer (the
//! composed version transposes, copies, slices, negates, concatenates and multiplies).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::view::{output, storage_slice, tensor, view};
use crate::error::Result;

/// A projection's layout: [batch, seq, heads, head_dim] on one side of the split,
/// [batch, heads, seq, head_dim] on the other.
#[derive(Clone, Copy)]
pub(super) struct Heads {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// cos and sin tables [seq, rotary_dim] in transformers' rotate-half layout: the rotated
/// part of a head, all of it unless the family turns only its leading dimensions (Phi-4-mini).
#[derive(Clone, Copy)]
pub(super) struct Tables<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

impl<'a> Tables<'a> {
    /// Position `position`'s rows, for tables of `seq` rows.
    fn at(self, position: usize, seq: usize) -> (&'a [f32], &'a [f32]) {
        let width = self.cos.len() / seq.max(1);
        (
            &self.cos[position * width..][..width],
            &self.sin[position * width..][..width],
        )
    }
}

/// `dst = src·cos + sign·rotate_half(src)·sin` for one row's leading `cos.len()` dimensions,
/// the rest copied; `sign = −1` rotates back (the backward pass: the transpose of a rotation
/// is its inverse). Without tables, a copy.
fn rotate(src: &[f32], dst: &mut [f32], tables: Option<(&[f32], &[f32])>, sign: f32) {
    let Some((cos, sin)) = tables else {
        dst.copy_from_slice(src);
        return;
    };
    let turned = cos.len();
    dst[turned..].copy_from_slice(&src[turned..]);
    let half = turned / 2;
    for j in 0..half {
        dst[j] = src[j] * cos[j] - sign * src[j + half] * sin[j];
        dst[j + half] = src[j + half] * cos[j + half] + sign * src[j] * sin[j + half];
    }
}

impl Heads {
    /// `x` [batch, seq, heads, head_dim] as [batch, heads, seq, head_dim], each row rotated
    /// by its position's `tables` when given.
    pub fn split(&self, x: &[f32], tables: Option<Tables>) -> Vec<f32> {
        let (s, h, d) = (self.seq, self.heads, self.head_dim);
        let mut y = vec![0.0f32; x.len()];
        // One task per (example, head): its [seq, head_dim] block of the output.
        y.par_chunks_mut(s * d).enumerate().for_each(|(job, dst)| {
            let (b, head) = (job / h, job % h);
            for (i, row) in dst.chunks_exact_mut(d).enumerate() {
                let src = &x[((b * s + i) * h + head) * d..][..d];
                rotate(src, row, tables.map(|t| t.at(i, s)), 1.0);
            }
        });
        y
    }

    /// The transpose of [`Self::split`]: a gradient [batch, heads, seq, head_dim] back to
    /// [batch, seq, heads, head_dim], rotated back.
    pub fn merge(&self, g: &[f32], tables: Option<Tables>) -> Vec<f32> {
        let (s, h, d) = (self.seq, self.heads, self.head_dim);
        let mut dx = vec![0.0f32; g.len()];
        // One task per (example, position): its [heads, head_dim] block of the input.
        dx.par_chunks_mut(h * d).enumerate().for_each(|(job, dst)| {
            let (b, i) = (job / s, job % s);
            for (head, row) in dst.chunks_exact_mut(d).enumerate() {
                let src = &g[((b * h + head) * s + i) * d..][..d];
                rotate(src, row, tables.map(|t| t.at(i, s)), -1.0);
            }
        });
        dx
    }
}

struct Rope {
    heads: Heads,
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dtype = x.dtype();
        let x = storage_slice(x, lx)?;
        let (cos, sin) = (view(&self.cos)?, view(&self.sin)?);
        let y = self.heads.split(
            &x,
            Some(Tables {
                cos: &cos,
                sin: &sin,
            }),
        );
        let Heads {
            batch,
            seq,
            heads,
            head_dim,
        } = self.heads;
        Ok(output(y, (batch, heads, seq, head_dim), dtype))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (cos, sin) = (view(&self.cos)?, view(&self.sin)?);
        let dx = self.heads.merge(
            &view(&grad)?,
            Some(Tables {
                cos: &cos,
                sin: &sin,
            }),
        );
        Ok(Some(tensor(dx, x)?))
    }
}

/// Rotates `x` [batch, seq, heads, head_dim] by the tables `cos`, `sin` [seq, head_dim]
/// (`model::rope::Rope::tables`) and returns it as [batch, heads, seq, head_dim].
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, seq, heads, head_dim) = x.dims4()?;
    let op = Rope {
        heads: Heads {
            batch,
            seq,
            heads,
            head_dim,
        },
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}
