//! The gated MLP activation as one op: `act(gate) · up` with SiLU (SwiGLU) or tanh-GELU
//! (GeGLU, Gemma), and its backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::math::{sigmoid, tanh, vectorised};
use super::view::{filled, output, storage_slice, tensor, view};
use crate::error::Result;
use crate::model::family::Activation;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// √(2/π), in GELU's tanh approximation.
const GELU_C: f32 = 0.797_884_6;
/// The cubic term's factor in GELU's tanh approximation.
const GELU_A: f32 = 0.044_715;

/// `(act(x), act'(x))`.
#[inline(always)]
fn act_and_slope(act: Activation, x: f32) -> (f32, f32) {
    match act {
        // d silu(x)/dx = σ(x)·(1 + x·(1 − σ(x))).
        Activation::Silu => {
            let s = sigmoid(x);
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
        // gelu(x) = ½x(1 + tanh(c(x + a·x³))); its slope ½(1 + t) + ½x(1 − t²)·c(1 + 3a·x²).
        Activation::GeluTanh => {
            let t = tanh(GELU_C * (x + GELU_A * x * x * x));
            let y = 0.5 * x * (1.0 + t);
            let dy =
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x);
            (y, dy)
        }
    }
}

vectorised! {
    /// `y = silu(g) · u`: the hot loop of every Llama-family layer (σ alone, no slope).
    fn silu_into(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
            y.write(g * sigmoid(*g) * u);
        }
    }
}

vectorised! {
    /// `y = act(g) · u`.
    fn gated_into(act: Activation, y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
            y.write(act_and_slope(act, *g).0 * u);
        }
    }
}

vectorised! {
    /// `du = dy · act(g)`, `dg = dy · u · act'(g)`, for slices of one length.
    fn gated_gradients(
        act: Activation,
        parts: (&[f32], &[f32], &[f32]),
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
    ) {
        let (g, u, dy) = parts;
        let outs = dg.iter_mut().zip(du.iter_mut());
        for ((dg, du), ((g, u), dy)) in outs.zip(g.iter().zip(u).zip(dy)) {
            let (a, slope) = act_and_slope(act, *g);
            du.write(dy * a);
            dg.write(dy * u * slope);
        }
    }
}

/// `act(g) · u` elementwise.
pub(super) fn forward(act: Activation, g: &[f32], u: &[f32]) -> Vec<f32> {
    let n = g.len().min(u.len());
    filled(n, CHUNK, |i, y| {
        let (g, u) = (&g[i..][..y.len()], &u[i..][..y.len()]);
        match act {
            Activation::Silu => silu_into(y, g, u),
            _ => gated_into(act, y, g, u),
        }
    })
}

/// The gradients of `g` and `u` for the output gradient `dy` of `act(g) · u`.
pub(super) fn backward(act: Activation, g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = g.len().min(u.len()).min(dy.len());
    let mut du = Vec::with_capacity(n);
    let du_chunks = du.spare_capacity_mut()[..n].par_chunks_mut(CHUNK);
    let mut dg = Vec::with_capacity(n);
    dg.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(du_chunks)
        .enumerate()
        .for_each(|(c, (dg, du))| {
            let (i, len) = (c * CHUNK, dg.len());
            let parts = (&g[i..][..len], &u[i..][..len], &dy[i..][..len]);
            gated_gradients(act, parts, dg, du);
        });
    // SAFETY: the chunks cover the first `n` elements of both, each written above.
    unsafe {
        dg.set_len(n);
        du.set_len(n);
    }
    (dg, du)
}

struct Gated(Activation);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        match self.0 {
            Activation::Silu => "fused-swiglu",
            Activation::GeluTanh => "fused-geglu",
        }
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        lg: &Layout,
        up: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (storage_slice(gate, lg)?, storage_slice(up, lu)?);
        Ok(output(
            forward(self.0, &g, &u),
            lg.shape().clone(),
            gate.dtype(),
        ))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dg, du) = backward(self.0, &view(gate)?, &view(up)?, &view(&grad)?);
        Ok((Some(tensor(dg, gate)?), Some(tensor(du, up)?)))
    }
}

/// `silu(gate) · up` for two tensors of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate
        .contiguous()?
        .apply_op2(&up.contiguous()?, Gated(Activation::Silu))?)
}

/// `gelu_tanh(gate) · up` for two tensors of one shape.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate
        .contiguous()?
        .apply_op2(&up.contiguous()?, Gated(Activation::GeluTanh))?)
}
