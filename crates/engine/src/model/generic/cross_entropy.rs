//! The LM head and masked cross-entropy in chunks of rows on any device, as
//! `fused::cross_entropy` does on the CPU: the [tokens, vocabulary] logits never exist
//! whole. Each chunk's logits give its part of the loss and, while they are at hand, the
//! hidden states' gradient (and a trained head's weight gradient), so the backward pass
//! only scales what the forward pass left. Logits and softmax in f32; the products in the
//! model's precision.

use candle_core::{CustomOp1, CustomOp2, DType, Tensor, D};

use crate::error::{EngineError, Result};
use crate::model::reentry::{precomputed_forward, Precomputed};

/// Most logits one chunk holds (64 MiB in f32).
pub const LOGITS_PER_CHUNK: usize = 1 << 24;

/// A loss computed outside the graph with its gradients, as an op: the forward pass hands
/// back the loss, the backward pass scales the gradients by the loss's own gradient. The
/// fused CPU loss re-enters the graph the same way.
struct HeadLoss {
    loss: Precomputed,
    hidden_grad: Option<Tensor>,
    weight_grad: Option<Tensor>,
}

/// `g` (a gradient of the loss) scaled by the loss's own gradient `by`.
fn scaled(g: &Option<Tensor>, by: &Tensor) -> candle_core::Result<Option<Tensor>> {
    g.as_ref()
        .map(|g| g.broadcast_mul(&by.to_dtype(g.dtype())?))
        .transpose()
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "lm-head-loss"
    }

    precomputed_forward!(loss; _x _xl);

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        scaled(&self.hidden_grad, grad)
    }
}

impl CustomOp2 for HeadLoss {
    fn name(&self) -> &'static str {
        "lm-head-loss"
    }

    precomputed_forward!(loss; _x _xl, _y _yl);

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            scaled(&self.hidden_grad, grad)?,
            scaled(&self.weight_grad, grad)?,
        ))
    }
}

/// The scalar `loss` [] of `hidden·weightᵀ` as a node of the graph over `hidden` (and over
/// `weight` when `hidden_grad`'s sibling `weight_grad` is given: a trained head), whose
/// backward pass hands back the gradients computed with it.
pub(crate) fn loss_node(
    hidden: &Tensor,
    loss: Tensor,
    hidden_grad: Option<Tensor>,
    trained: Option<(&Tensor, Tensor)>,
) -> Result<Tensor> {
    let (weight, weight_grad) = trained.unzip();
    let op = HeadLoss {
        loss: Precomputed::new(loss),
        hidden_grad,
        weight_grad,
    };
    Ok(match weight {
        Some(weight) => hidden.apply_op2(weight, op)?,
        None => hidden.apply_op1(op)?,
    })
}

/// An error naming the first target outside a vocabulary of `vocab`, if any.
pub(crate) fn check_targets(targets: &[u32], vocab: usize) -> Result<()> {
    match targets.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => Err(EngineError::config(
            "data",
            format!("token id {t} is outside the model's vocabulary of {vocab}"),
        )),
        None => Ok(()),
    }
}

/// Mean cross-entropy of the logits `hidden·weightᵀ` (`hidden` [n, h], `weight` [vocab, h],
/// frozen or trained) against `targets` [n] over the positions whose `weights` [n] entry is
/// not 0, each counted with its weight: the value of `ops::masked_cross_entropy` on the
/// logits. Returns `(loss, counted positions)`.
pub fn lm_head_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<(Tensor, f64)> {
    let rows = LOGITS_PER_CHUNK / weight.dim(0)?.max(1);
    loss_in_chunks(hidden, weight, targets, weights, rows)
}

/// [`lm_head_cross_entropy`] in chunks of `rows` rows (at least 16).
fn loss_in_chunks(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    rows: usize,
) -> Result<(Tensor, f64)> {
    let (n, h) = hidden.dims2()?;
    let vocab = weight.dim(0)?;
    let device = hidden.device();
    // One read of the targets and weights on the host: the range check, the count, and
    // which chunks have a position to count.
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?;
    let weights = weights.flatten_all()?.to_dtype(DType::F32)?;
    let host_targets: Vec<u32> = targets.to_vec1()?;
    let host_weights: Vec<f32> = weights.to_vec1()?;
    check_targets(&host_targets, vocab)?;
    let count: f64 = host_weights.iter().map(|&w| f64::from(w)).sum();
    let train_head = weight.track_op();
    let wants_grad = hidden.track_op() || train_head;
    let scale = 1.0 / count.max(1.0);
    let (hd, wd) = (hidden.detach(), weight.detach());
    let (targets, weights) = (targets.to_device(device)?, weights.to_device(device)?);
    let ids = Tensor::arange(0u32, vocab as u32, device)?.unsqueeze(0)?;
    let rows = rows.clamp(16, n.max(16));
    let mut loss = Tensor::zeros((), DType::F32, device)?;
    let mut dh = Vec::new();
    let mut dw = train_head
        .then(|| Tensor::zeros((vocab, h), DType::F32, device))
        .transpose()?;
    for start in (0..n).step_by(rows) {
        let len = rows.min(n - start);
        if host_weights[start..start + len].iter().all(|&w| w == 0.0) {
            if wants_grad {
                dh.push(Tensor::zeros((len, h), hd.dtype(), device)?);
            }
            continue;
        }
        let h_c = hd.narrow(0, start, len)?;
        let w_c = weights.narrow(0, start, len)?.unsqueeze(1)?;
        let t_c = targets.narrow(0, start, len)?.unsqueeze(1)?;
        let logits = h_c.matmul(&wd.t()?)?.to_dtype(DType::F32)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let exps = shifted.exp()?;
        let sums = exps.sum_keepdim(D::Minus1)?;
        let picked = shifted.gather(&t_c, 1)?;
        loss = (loss + ((sums.log()? - picked)? * &w_c)?.sum_all()?)?;
        if wants_grad {
            // (softmax − one-hot) · weight / count, the softmax from the same exponentials.
            let one_hot = ids.broadcast_eq(&t_c)?.to_dtype(DType::F32)?;
            let d_logits = ((exps.broadcast_div(&sums)? - one_hot)?.broadcast_mul(&w_c)? * scale)?;
            let d_low = d_logits.to_dtype(wd.dtype())?;
            dh.push(d_low.matmul(&wd)?);
            if let Some(acc) = dw.as_mut() {
                *acc = (&*acc + d_low.t()?.matmul(&h_c)?.to_dtype(DType::F32)?)?;
            }
        }
    }
    let loss = (loss * scale)?;
    let hidden_grad = (hidden.track_op() && !dh.is_empty())
        .then(|| Tensor::cat(&dh, 0))
        .transpose()?;
    let weight_grad = dw.map(|g| g.to_dtype(weight.dtype())).transpose()?;
    let trained = weight_grad.map(|g| (weight, g));
    let loss = loss_node(hidden, loss, hidden_grad, trained)?;
    Ok((loss, count))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Chunks of 16 rows (one of them all weight 0, skipped) give the loss and both
    /// gradients of one chunk of all 50.
    #[test]
    fn chunks_of_rows_equal_one_chunk() -> Result<()> {
        let (n, h, vocab) = (50, 8, 20);
        let mut rng = crate::ops::SplitMix64::new(5);
        let mut random = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
                .collect()
        };
        let hidden = Var::from_vec(random(n * h), (n, h), &Device::Cpu)?;
        let weight = Var::from_vec(random(vocab * h), (vocab, h), &Device::Cpu)?;
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % vocab as u32).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu)?;
        let weights: Vec<f32> = (0..n)
            .map(|i| if (16..32).contains(&i) { 0.0 } else { 1.0 })
            .collect();
        let weights = Tensor::new(weights.as_slice(), &Device::Cpu)?;
        let run = |rows| -> Result<(f32, Vec<f32>, Vec<f32>)> {
            let (loss, count) = loss_in_chunks(&hidden, &weight, &targets, &weights, rows)?;
            assert_eq!(count, 34.0);
            let grads = loss.backward()?;
            let flat = |v: &Var| -> Result<Vec<f32>> {
                Ok(grads
                    .get(v.as_tensor())
                    .ok_or_else(|| EngineError::config("test", "no gradient"))?
                    .flatten_all()?
                    .to_vec1()?)
            };
            Ok((loss.to_scalar()?, flat(&hidden)?, flat(&weight)?))
        };
        let (chunked, whole) = (run(16)?, run(64)?);
        assert!((chunked.0 - whole.0).abs() < 1e-6);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&chunked.1, &whole.1) && close(&chunked.2, &whole.2));
        assert!(chunked.1[16 * h..32 * h].iter().all(|&g| g == 0.0));
        Ok(())
    }
}
