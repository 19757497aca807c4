//! RMSNorm as one op: `x / sqrt(mean(x²) + eps) · weight` per row, and its backward.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::view::{output, storage_slice, tensor, view};
use crate::error::Result;

/// Rows per parallel task: enough work to amortise scheduling.
const ROWS_PER_TASK: usize = 32;

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let mean = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        1.0 / (mean + self.eps).sqrt()
    }
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
        let (x, w) = (storage_slice(x, lx)?, storage_slice(w, lw)?);
        let h = w.len();
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(y, x)| {
                let r = self.inv_rms(x);
                for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * r * w;
                }
            });
        Ok(output(y, lx.shape().clone()))
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
        let h = ws.len();
        let mut dx = vec![0.0f32; xs.len()];
        // dx = r·(g⊙w) − x·r³·mean(g⊙w⊙x); dw = Σ over rows of g⊙x·r (summed per task).
        let dw = dx
            .par_chunks_mut(h * ROWS_PER_TASK)
            .zip(xs.par_chunks(h * ROWS_PER_TASK))
            .zip(gs.par_chunks(h * ROWS_PER_TASK))
            .map(|((dx, x), g)| {
                let mut dw = vec![0.0f32; h];
                for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    let r = self.inv_rms(x);
                    let dot: f32 = g.iter().zip(&*ws).zip(x).map(|((g, w), x)| g * w * x).sum();
                    let c = r * r * r * dot / h as f32;
                    for i in 0..h {
                        dx[i] = r * g[i] * ws[i] - x[i] * c;
                        dw[i] += g[i] * x[i] * r;
                    }
                }
                dw
            })
            .reduce(
                || vec![0.0f32; h],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let dw = if w.track_op() {
            Some(tensor(dw, w.shape())?)
        } else {
            None
        };
        Ok((Some(tensor(dx, x.shape())?), dw))
    }
}

/// RMSNorm of `x` [..., hidden] with `weight` [hidden].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })?)
}
