//! The SwiGLU gate as one op: `silu(gate) · up`, and its backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::math::sigmoid;
use super::view::{output, storage_slice, tensor, view};
use crate::error::Result;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `silu(g) · u` elementwise.
pub(super) fn forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; g.len()];
    y.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(y, (g, u))| {
            for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                *y = g * sigmoid(*g) * u;
            }
        });
    y
}

/// The gradients of `g` and `u` for the output gradient `dy`.
pub(super) fn backward(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0.0f32; g.len()];
    let mut du = vec![0.0f32; g.len()];
    // d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g))).
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .zip(dy.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), dy)| {
            for i in 0..g.len() {
                let s = sigmoid(g[i]);
                du[i] = dy[i] * g[i] * s;
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
    (dg, du)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        lg: &Layout,
        up: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (storage_slice(gate, lg)?, storage_slice(up, lu)?);
        Ok(output(forward(&g, &u), lg.shape().clone(), gate.dtype()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dg, du) = backward(&view(gate)?, &view(up)?, &view(&grad)?);
        Ok((Some(tensor(dg, gate)?), Some(tensor(du, up)?)))
    }
}

/// `silu(gate) · up` for two tensors of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}
