//! The language-model head and the masked cross-entropy as one op, over chunks of rows.
//!
//! Composed, the loss keeps several [tokens, vocabulary] f32 tensors (logits, shifted,
//! exponentials, log-probabilities) and as many gradients: 200 MB each for 4 × 256 tokens of
//! a 49k vocabulary. Here each chunk of rows gets its logits, its loss and, while the logits
//! are at hand, its gradient with respect to the hidden states; only that gradient
//! [tokens, hidden] is kept for the backward pass. Rows whose loss weight is 0 (prompt and
//! padding tokens) are skipped altogether. A trained head's weight (full fine-tuning, or a
//! freeze run that trains the head or the embeddings tied to it) gets its gradient the same
//! way, summed chunk by chunk into one [vocabulary, hidden] buffer.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::linear::{contiguous, Weight};
use super::math;
use super::matmul::{matmul, Mat};
use super::view::{base_weight_view, tensor, view};
use crate::error::Result;
use crate::model::base_weight::BaseWeight;
use crate::model::generic::cross_entropy::{check_targets, loss_node};

/// Rows per chunk for a head of `vocab × hidden`: a chunk's logits are `rows × vocab` floats.
/// Fewer rows make the head's product slower (gemm, one core: 64 rows 40 GFLOP/s, 128 rows
/// 56, 256 rows 59) and pack the head's weight once per chunk and product, which a large
/// head pays for: measured alternately on this 2-core AMX VM at 4 × 256 tokens, Gemma 3
/// 270M's 671 MB head trains 8% faster with 1,024 rows than with 256 (+770 MB), SmolLM2's
/// 113 MB head no faster (+150 MB). The planner counts the same (`memory.rs`).
pub fn chunk_rows(vocab: usize, hidden: usize) -> usize {
    if vocab.saturating_mul(hidden) > 1 << 26 {
        1024
    } else {
        256
    }
}

/// One slice of the vocabulary for one chunk of rows: its logits (then exponentials, then
/// gradients) [rows, width] and, per row, their maximum, the sum of their exponentials
/// relative to it, and the target's logit when the target falls in this slice.
struct Slice {
    v0: usize,
    width: usize,
    logits: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    picked: Vec<Option<f32>>,
}

impl Slice {
    /// The slice `v0..v0 + width` for the chunk's hidden states `hc` [rows, hidden] and
    /// its rows' `targets`.
    fn compute(
        hc: &[f32],
        w: Weight,
        hidden: usize,
        (v0, width): (usize, usize),
        targets: &[usize],
        softcap: Option<f32>,
    ) -> Self {
        let c = targets.len();
        let mut logits = vec![0.0f32; c * width];
        // `logits` is freshly zeroed: accumulate (see `matmul`).
        let slice = w.rows(v0, width, hidden);
        slice.forward(hc, &mut logits, (c, hidden, width), false);
        if let Some(cap) = softcap {
            logits
                .iter_mut()
                .for_each(|x| *x = cap * math::tanh(*x / cap));
        }
        let (mut max, mut sum, mut picked) = (
            Vec::with_capacity(c),
            Vec::with_capacity(c),
            Vec::with_capacity(c),
        );
        for (row, &t) in logits.chunks_exact_mut(width).zip(targets) {
            picked.push((v0..v0 + width).contains(&t).then(|| row[t - v0]));
            let m = math::max(row);
            math::exp_shifted(row, m);
            max.push(m);
            sum.push(math::sum(row));
        }
        Self {
            v0,
            width,
            logits,
            max,
            sum,
            picked,
        }
    }
}

/// One chunk's loss sum and, when asked, its rows' gradients [rows, hidden], with the head
/// weight's gradient added into `dw` [vocab, hidden] when given. The vocabulary is split
/// into one slice per thread, so each thread packs only its slice of the head's weight
/// (113 MB for SmolLM2, packed anew by every product), writes only its rows of `dw`, and
/// the hidden states' gradient sums over the slices.
#[allow(clippy::too_many_arguments)]
fn chunk(
    rows: &[usize],
    h: &[f32],
    w: Weight,
    (hidden, vocab): (usize, usize),
    targets: &[u32],
    weights: &[f32],
    grad_scale: Option<f32>,
    dw: Option<&mut [f32]>,
    softcap: Option<f32>,
) -> (f64, Vec<f32>) {
    let c = rows.len();
    let mut hc = vec![0.0f32; c * hidden];
    for (dst, &r) in hc.chunks_exact_mut(hidden).zip(rows) {
        dst.copy_from_slice(&h[r * hidden..][..hidden]);
    }
    let chunk_targets: Vec<usize> = rows.iter().map(|&r| targets[r] as usize).collect();
    let width = vocab.div_ceil(rayon::current_num_threads().max(1));
    let mut slices: Vec<Slice> = (0..vocab)
        .step_by(width.max(1))
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|v0| {
            let slice = (v0, width.min(vocab - v0));
            Slice::compute(&hc, w, hidden, slice, &chunk_targets, softcap)
        })
        .collect();
    // Per row: the overall maximum and sum of exponentials, the loss, and each slice's
    // factor turning its exponentials into d loss / d logits = w·(softmax − one_hot)/count.
    let mut loss = 0.0f64;
    let mut factors = vec![vec![0.0f32; c]; slices.len()];
    for (i, &r) in rows.iter().enumerate() {
        let max = slices
            .iter()
            .map(|s| s.max[i])
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = slices
            .iter()
            .map(|s| s.sum[i] * (s.max[i] - max).exp())
            .sum();
        let picked = slices.iter().find_map(|s| s.picked[i]).unwrap_or(0.0);
        loss += weights[r] as f64 * (max + sum.ln() - picked) as f64;
        let scale = weights[r] * grad_scale.unwrap_or(0.0) / sum;
        for (f, s) in factors.iter_mut().zip(&slices) {
            f[i] = (s.max[i] - max).exp() * scale;
        }
    }
    let Some(grad_scale) = grad_scale else {
        return (loss, Vec::new());
    };
    let mut dw_slices: Vec<Option<&mut [f32]>> = match dw {
        Some(dw) => dw.chunks_mut(width * hidden).map(Some).collect(),
        None => slices.iter().map(|_| None).collect(),
    };
    let dh = slices
        .par_iter_mut()
        .zip(&factors)
        .zip(dw_slices.par_iter_mut())
        .map(|((s, f), dw)| {
            for (i, row) in s.logits.chunks_exact_mut(s.width).enumerate() {
                // Soft-capped logits c = cap·tanh(l/cap) are recovered from their
                // exponentials (c = ln e + max: exact while 2·cap < 87, the exponential's
                // floor; past it only entries of probability < e^-87 are off), for the cap's
                // derivative 1 − tanh² per entry.
                let slopes: Option<Vec<f32>> = softcap.map(|cap| {
                    let mut d: Vec<f32> = row
                        .iter()
                        .map(|e| {
                            let t = (e.ln() + s.max[i]) / cap;
                            1.0 - t * t
                        })
                        .collect();
                    // The target's own capped logit is at hand, exact whatever the cap.
                    if let Some(c) = s.picked[i] {
                        d[chunk_targets[i] - s.v0] = 1.0 - (c / cap) * (c / cap);
                    }
                    d
                });
                row.iter_mut().for_each(|x| *x *= f[i]);
                let t = chunk_targets[i];
                if (s.v0..s.v0 + s.width).contains(&t) {
                    row[t - s.v0] -= weights[rows[i]] * grad_scale;
                }
                if let Some(slopes) = slopes {
                    row.iter_mut().zip(&slopes).for_each(|(x, d)| *x *= d);
                }
            }
            // dW[v0 + j] += Σ_i dlogits[i, j] · hc[i].
            if let Some(dw) = dw {
                let g = Mat::rows(&s.logits, c, s.width, s.width);
                matmul(
                    dw,
                    hidden,
                    g.t(),
                    Mat::rows(&hc, c, hidden, hidden),
                    1.0,
                    true,
                );
            }
            let mut dh = vec![0.0f32; c * hidden];
            let slice = w.rows(s.v0, s.width, hidden);
            slice.input_gradient(&s.logits, &mut dh, (c, hidden, s.width), false);
            dh
        })
        .reduce(
            || vec![0.0f32; c * hidden],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    (loss, dh)
}

/// Mean cross-entropy of the logits `hidden·weightᵀ` (`hidden` [n, h], `weight` [vocab, h],
/// frozen (quantized, too) or trained; soft-capped as `cap · tanh(logit / cap)` with
/// `softcap`) against `targets` [n] (u32), over the positions whose
/// `weights` [n] entry is not 0, each counted with its weight: the value of
/// `ops::masked_cross_entropy` on the logits. Returns `(loss, counted positions)`.
pub fn lm_head_cross_entropy(
    hidden: &Tensor,
    weight: &BaseWeight,
    targets: &Tensor,
    weights: &Tensor,
    softcap: Option<f64>,
) -> Result<(Tensor, f64)> {
    let (n, h) = hidden.dims2()?;
    let vocab = weight.dims().0;
    let targets: Vec<u32> = targets.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let weights: Vec<f32> = weights.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    check_targets(&targets, vocab)?;
    let count: f64 = weights.iter().map(|&w| w as f64).sum();
    let active: Vec<usize> = (0..n).filter(|&r| weights[r] != 0.0).collect();
    let hidden_c = hidden.contiguous()?;
    let weight_c = contiguous(weight)?;
    let (hs, ws) = (view(&hidden_c)?, base_weight_view(&weight_c)?);
    let trained_head = weight_c.as_dense().filter(|w| w.track_op());
    let train_head = trained_head.is_some();
    let grad_scale = (hidden.track_op() || train_head).then_some(1.0 / count.max(1.0) as f32);
    let mut dw = train_head.then(|| vec![0.0f32; vocab * h]);
    let rows_per_chunk = chunk_rows(vocab, h);
    let parts: Vec<(f64, Vec<f32>)> = active
        .chunks(rows_per_chunk)
        .map(|rows| {
            chunk(
                rows,
                &hs,
                ws.weight(),
                (h, vocab),
                &targets,
                &weights,
                grad_scale,
                dw.as_deref_mut(),
                softcap.map(|c| c as f32),
            )
        })
        .collect();
    let loss = parts.iter().map(|(l, _)| l).sum::<f64>() / count.max(1.0);
    let grad = match grad_scale.filter(|_| hidden.track_op()) {
        Some(_) => {
            let mut dh = vec![0.0f32; n * h];
            for (rows, (_, part)) in active.chunks(rows_per_chunk).zip(&parts) {
                for (&r, src) in rows.iter().zip(part.chunks_exact(h)) {
                    dh[r * h..][..h].copy_from_slice(src);
                }
            }
            Some(tensor(dh, &hidden_c)?)
        }
        None => None,
    };
    drop((hs, ws));
    let loss = Tensor::new(loss as f32, hidden.device())?;
    let trained = match (trained_head, dw) {
        (Some(w), Some(dw)) => Some((w, tensor(dw, w)?)),
        _ => None,
    };
    let loss = loss_node(&hidden_c, loss, grad, trained)?;
    Ok((loss, count))
}
