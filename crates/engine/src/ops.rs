//! Differentiable building blocks. candle's fused `softmax_last_dim`, `rms_norm` and `rope`
//! have no backward and silently cut the graph, so training uses these compositions of ops
//! whose backward candle implements (see docs/ARCHITECTURE.md).

use std::cell::Cell;

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;

/// The type mixed precision computes in for values of type `dtype`: f32 for half-precision
/// types, the type itself otherwise (f32, or f64 in the gradient checks).
pub fn wide(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// `x` in its [`wide`] type.
fn widened(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(wide(x.dtype()))?)
}

/// `f` of `x` computed at least in f32 and returned in `x`'s type: what mixed precision keeps
/// in f32 (norms, softmax), as PyTorch's autocast does.
fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    Ok(f(&widened(x)?)?.to_dtype(x.dtype())?)
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight` (in f32).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    in_f32(x, |x| {
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let w = weight.to_dtype(x.dtype())?;
        Ok(x.broadcast_mul(&inv_rms)?.broadcast_mul(&w)?)
    })
}

/// `cap · tanh(x / cap)` (Gemma 2's soft-capping of scores and logits), or `x` without a cap.
pub fn soft_cap(x: Tensor, cap: Option<f64>) -> Result<Tensor> {
    Ok(match cap {
        Some(cap) => ((x / cap)?.tanh()? * cap)?,
        None => x,
    })
}

/// GELU's tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (transformers'
/// `gelu_new` and `gelu_pytorch_tanh`), composed from elementary ops so that its gradient is
/// exact: candle's own `gelu` differentiates with rounded constants (off by ~1e-3 of small
/// gradients in f64).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * c)?;
    Ok(((inner.tanh()? + 1.0)? * x)?.affine(0.5, 0.0)?)
}

/// Softmax over the last dimension (in f32). The max is detached: softmax is
/// shift-invariant, so the gradient is unchanged and the max needs no backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    })
}

/// Log-softmax over the last dimension (same detached-max trick).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Mean cross-entropy of `logits` [n, vocab] against `targets` [n] (u32), counting only
/// positions whose `weights` [n] entry is 1. Returns `(loss, counted positions)`.
pub fn masked_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<(Tensor, f64)> {
    // The loss at least in f32 whatever the model computes in.
    let logits = widened(logits)?;
    let logp = log_softmax_last_dim(&logits)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let count = host_scalar(&widened(weights)?.sum_all()?)?;
    let total = (picked * weights.to_dtype(logits.dtype())?)?.sum_all()?;
    let loss = (total.neg()? / count.max(1.0))?;
    Ok((loss, count))
}

/// A scalar tensor's value on the host, read in its own precision: an f64 tensor (the CPU
/// reference) as it is, anything else through f32, since Metal has no f64 and a GPU has no
/// reason to widen.
pub fn host_scalar(t: &Tensor) -> Result<f64> {
    Ok(match t.dtype() {
        DType::F64 => t.to_scalar::<f64>()?,
        _ => f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?),
    })
}

/// `x @ wᵀ` for `x` [..., in] and `w` [out, in], flattening the leading dims so that one
/// 2-D matmul runs whatever the batch shape.
pub fn linear_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let fan_in = dims[dims.len() - 1];
    let rows = x.elem_count() / fan_in.max(1);
    let y = x.reshape((rows, fan_in))?.matmul(&w.t()?)?;
    let mut out_dims = dims.to_vec();
    let last = out_dims.len() - 1;
    out_dims[last] = w.dim(0)?;
    Ok(y.reshape(out_dims)?)
}

/// SplitMix64: a tiny, seedable generator. Every random draw in training derives from
/// (seed, step) through it, which makes resume exact without saving generator state.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal value (Box–Muller), as torch's `normal_` draws.
    pub fn next_normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_f64().max(1e-12), self.next_f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Mixes two words into a seed (for per-step, per-use streams).
    pub fn mix(a: u64, b: u64) -> u64 {
        SplitMix64::new(a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
    }
}

/// Per-forward state: whether dropout is active, and its random stream; whether layers
/// recompute their activations in the backward pass.
#[derive(Debug)]
pub struct ForwardCtx {
    train: bool,
    seed: u64,
    draws: Cell<u64>,
    recompute: bool,
}

impl ForwardCtx {
    /// Inference: dropout off.
    pub fn eval() -> Self {
        Self {
            train: false,
            seed: 0,
            draws: Cell::new(0),
            recompute: false,
        }
    }

    /// Training: dropout on, masks derived from `seed`.
    pub fn train(seed: u64) -> Self {
        Self {
            train: true,
            seed,
            draws: Cell::new(0),
            recompute: false,
        }
    }

    /// Gradient checkpointing: decoder layers keep only their input and recompute the rest
    /// in the backward pass (where they run as one fused op: the CPU in f32).
    pub fn with_checkpointing(mut self, on: bool) -> Self {
        self.recompute = on;
        self
    }

    /// Whether gradient checkpointing is on.
    pub fn checkpointing(&self) -> bool {
        self.recompute
    }

    /// Whether [`Self::dropout`] with probability `p` changes anything.
    pub fn dropout_active(&self, p: f64) -> bool {
        self.train && p > 0.0
    }

    /// The next dropout mask's draw for probability `p`, or `None` when dropout changes
    /// nothing (eval mode, `p` = 0). Draws are numbered in forward order.
    pub fn draw_dropout(&self, p: f64) -> Option<DropoutDraw> {
        if !self.dropout_active(p) {
            return None;
        }
        let draw = self.draws.get();
        self.draws.set(draw + 1);
        Some(DropoutDraw {
            keep: 1.0 - p,
            seed: SplitMix64::mix(self.seed, draw),
        })
    }

    /// Inverted dropout with probability `p`; the identity in eval mode or when `p` is 0.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        let Some(draw) = self.draw_dropout(p) else {
            return Ok(x.clone());
        };
        let cols = x.dims().last().copied().unwrap_or(1).max(1);
        let mask = draw.tensor(x.elem_count() / cols, cols, x.device(), x.dtype())?;
        Ok((x * mask.reshape(x.shape())?)?)
    }
}

/// One dropout mask, drawn: the keep probability and the seed its rows' streams derive from
/// (the fused decoder layer draws in the composed ops' order and gets the same masks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutDraw {
    /// 1 − p.
    pub keep: f64,
    /// The seed of row r's stream is `mix(seed, r)`.
    pub seed: u64,
}

impl DropoutDraw {
    /// The mask for `rows` rows of `cols`: 1/keep where an element is kept, 0 where dropped;
    /// each row from its own stream, so rows are drawn in parallel.
    pub fn mask(&self, rows: usize, cols: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let scale = (1.0 / self.keep) as f32;
        let mut mask = vec![0.0f32; rows * cols];
        mask.par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let mut rng = SplitMix64::new(SplitMix64::mix(self.seed, r as u64));
                for m in row {
                    *m = if rng.next_f64() < self.keep {
                        scale
                    } else {
                        0.0
                    };
                }
            });
        mask
    }

    /// The mask [rows, cols] as a tensor on `device` in `dtype`. On the CPU it is
    /// [`Self::mask`]. On a GPU it is drawn there by the device's generator seeded with this
    /// draw's seed: reproducible on the same device (and redrawn identically in a backward
    /// pass), though not the CPU's values, since copying a mask per projection from the host
    /// would cost more than the product it masks. Where the device cannot be seeded, the
    /// host's mask is copied over.
    pub fn tensor(
        &self,
        rows: usize,
        cols: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        if !device.is_cpu() && device.set_seed(self.seed).is_ok() {
            let uniform = Tensor::rand(0f32, 1f32, (rows, cols), device)?;
            let kept = uniform.lt(self.keep)?.to_dtype(dtype)?;
            return Ok((kept * (1.0 / self.keep))?);
        }
        Ok(
            Tensor::from_vec(self.mask(rows, cols), (rows, cols), &Device::Cpu)?
                .to_device(device)?
                .to_dtype(dtype)?,
        )
    }
}
