//! RMSNorm as one op: `x / sqrt(mean(x²) + eps) · weight` per row, and its backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::view::{output, storage_slice, tensor, view};
use crate::error::Result;

/// Rows per parallel task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 32;

/// `1 / sqrt(mean(x²) + eps)` of every row of `x` [rows, hidden].
pub(super) fn inv_rms(x: &[f32], hidden: usize, eps: f32) -> Vec<f32> {
    x.par_chunks(hidden)
        .with_min_len(ROWS_PER_TASK)
        .map(|row| {
            let mean = row.iter().map(|x| x * x).sum::<f32>() / hidden as f32;
            1.0 / (mean + eps).sqrt()
        })
        .collect()
}

/// `x · inv · w` row by row: the norm's output from its rows' `inv_rms`.
pub(super) fn normalized(x: &[f32], w: &[f32], inv: &[f32]) -> Vec<f32> {
    let h = w.len();
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(h)
        .zip(x.par_chunks(h).zip(inv))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(y, (x, r))| {
            for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
    y
}

/// Adds the input's gradient for the output gradient `g` into `dx`; returns the weight's
/// gradient when `weight_grad`.
pub(super) fn backward(
    x: &[f32],
    w: &[f32],
    inv: &[f32],
    g: &[f32],
    dx: &mut [f32],
    weight_grad: bool,
) -> Option<Vec<f32>> {
    let h = w.len();
    let n = h * ROWS_PER_TASK;
    // dx += r·(g⊙w) − x·r³·mean(g⊙w⊙x); dw = Σ over rows of g⊙x·r (summed per task).
    let dw = dx
        .par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(g.par_chunks(n)))
        .zip(inv.par_chunks(ROWS_PER_TASK))
        .map(|((dx, (x, g)), inv)| {
            let mut dw = vec![0.0f32; if weight_grad { h } else { 0 }];
            for (((dx, x), g), &r) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)).zip(inv) {
                let dot: f32 = g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
                let c = r * r * r * dot / h as f32;
                for i in 0..h {
                    dx[i] += r * g[i] * w[i] - x[i] * c;
                }
                if weight_grad {
                    dw.iter_mut()
                        .zip(g.iter().zip(x))
                        .for_each(|(dw, (g, x))| *dw += g * x * r);
                }
            }
            dw
        })
        .reduce(
            || vec![0.0f32; if weight_grad { h } else { 0 }],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    weight_grad.then_some(dw)
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dtype = x.dtype();
        let (x, w) = (storage_slice(x, lx)?, storage_slice(w, lw)?);
        let inv = inv_rms(&x, w.len(), self.eps);
        Ok(output(normalized(&x, &w, &inv), lx.shape().clone(), dtype))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (xs, ws, gs) = (view(x)?, view(w)?, view(&grad)?);
        let inv = inv_rms(&xs, ws.len(), self.eps);
        let mut dx = vec![0.0f32; xs.len()];
        let dw = backward(&xs, &ws, &inv, &gs, &mut dx, w.track_op());
        let dw = dw.map(|dw| tensor(dw, w)).transpose()?;
        Ok((Some(tensor(dx, x)?), dw))
    }
}

/// RMSNorm of `x` [..., hidden] with `weight` [hidden].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })?)
}
