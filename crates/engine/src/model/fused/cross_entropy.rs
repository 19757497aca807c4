//! The language-model head and the masked cross-entropy as one op, over chunks of rows.
//!
//! Composed, the loss keeps several [tokens, vocabulary] f32 tensors (logits, shifted,
//! exponentials, log-probabilities) and as many gradients: 200 MB each for 4 × 256 tokens of
//! a 49k vocabulary. Here each chunk of rows gets its logits, its loss and, while the logits
//! are at hand, its gradient with respect to the hidden states; only that gradient
//! [tokens, hidden] is kept for the backward pass. Rows whose loss weight is 0 (prompt and
//! padding tokens) are skipped altogether. The head's weight must be frozen.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::math;
use super::matmul::{matmul, Mat};
use super::view::{output, view};
use crate::error::{EngineError, Result};

/// Rows per chunk: a chunk's logits are `ROWS × vocabulary` floats (25 MB for 49k). Fewer
/// rows make the head's product slower (64 rows: 40 GFLOP/s a core; 128: 56, measured).
const ROWS: usize = 128;

/// The loss, with the hidden states' gradient computed alongside it.
struct HeadLoss {
    loss: f32,
    grad: Option<Tensor>,
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "fused-lm-head-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(output(vec![self.loss], ()))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match &self.grad {
            Some(g) => Ok(Some(g.broadcast_mul(grad)?)),
            None => Ok(None),
        }
    }
}

/// One chunk's loss sum and, when asked, its rows' gradients [rows, hidden].
fn chunk(
    rows: &[usize],
    h: &[f32],
    w: &[f32],
    (hidden, vocab): (usize, usize),
    targets: &[u32],
    weights: &[f32],
    grad_scale: Option<f32>,
) -> (f64, Vec<f32>) {
    let c = rows.len();
    let mut hc = vec![0.0f32; c * hidden];
    for (dst, &r) in hc.chunks_exact_mut(hidden).zip(rows) {
        dst.copy_from_slice(&h[r * hidden..][..hidden]);
    }
    let mut logits = vec![0.0f32; c * vocab];
    let wm = Mat::rows(w, vocab, hidden, hidden);
    matmul(
        &mut logits,
        vocab,
        Mat::rows(&hc, c, hidden, hidden),
        wm.t(),
        1.0,
        true,
    );
    let mut loss = 0.0f64;
    for (row, &r) in logits.chunks_exact_mut(vocab).zip(rows) {
        let target = targets[r] as usize;
        let picked = row[target];
        let max = math::max(row);
        math::exp_shifted(row, max);
        let sum = math::sum(row);
        loss += weights[r] as f64 * (max + sum.ln() - picked) as f64;
        if let Some(scale) = grad_scale {
            // d loss / d logits = w·(softmax − one_hot)/count.
            let s = weights[r] * scale;
            let per_exp = s / sum;
            row.iter_mut().for_each(|x| *x *= per_exp);
            row[target] -= s;
        }
    }
    let mut dh = Vec::new();
    if grad_scale.is_some() {
        dh = vec![0.0f32; c * hidden];
        matmul(
            &mut dh,
            hidden,
            Mat::rows(&logits, c, vocab, vocab),
            wm,
            1.0,
            true,
        );
    }
    (loss, dh)
}

/// Mean cross-entropy of the logits `hidden·weightᵀ` (`hidden` [n, h], `weight` [vocab, h],
/// frozen) against `targets` [n] (u32), over the positions whose `weights` [n] entry is not
/// 0, each counted with its weight: the value of `ops::masked_cross_entropy` on the logits.
/// Returns `(loss, counted positions)`.
pub fn lm_head_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<(Tensor, f64)> {
    let (n, h) = hidden.dims2()?;
    let vocab = weight.dim(0)?;
    let targets: Vec<u32> = targets.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let weights: Vec<f32> = weights.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(EngineError::config(
            "data",
            format!("token id {t} is outside the model's vocabulary of {vocab}"),
        ));
    }
    let count: f64 = weights.iter().map(|&w| w as f64).sum();
    let active: Vec<usize> = (0..n).filter(|&r| weights[r] != 0.0).collect();
    let hidden_c = hidden.contiguous()?;
    let weight_c = weight.contiguous()?;
    let (hs, ws) = (view(&hidden_c)?, view(&weight_c)?);
    let grad_scale = hidden.track_op().then_some(1.0 / count.max(1.0) as f32);
    let parts: Vec<(f64, Vec<f32>)> = active
        .par_chunks(ROWS)
        .map(|rows| chunk(rows, &hs, &ws, (h, vocab), &targets, &weights, grad_scale))
        .collect();
    let loss = parts.iter().map(|(l, _)| l).sum::<f64>() / count.max(1.0);
    let grad = match grad_scale {
        Some(_) => {
            let mut dh = vec![0.0f32; n * h];
            for (rows, (_, part)) in active.chunks(ROWS).zip(&parts) {
                for (&r, src) in rows.iter().zip(part.chunks_exact(h)) {
                    dh[r * h..][..h].copy_from_slice(src);
                }
            }
            Some(Tensor::from_vec(dh, (n, h), hidden.device())?)
        }
        None => None,
    };
    drop((hs, ws));
    let op = HeadLoss {
        loss: loss as f32,
        grad,
    };
    Ok((hidden_c.apply_op1(op)?, count))
}
