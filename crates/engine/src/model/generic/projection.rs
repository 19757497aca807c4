//! A projection `x·Wᵀ + b` with its LoRA branch `s·(drop(x)·Aᵀ)·Bᵀ` or IA³ scale, forward
//! and backward from candle tensor ops: the input's gradient and the adapter's, and the
//! weight's and bias's where a method trains them (freeze, full fine-tuning).

use candle_core::{DType, Tensor};

use super::handoff::Sink;
use crate::error::Result;
use crate::model::adapters::lora::row_norms;
use crate::model::base_weight::BaseWeight;
use crate::ops::DropoutDraw;

/// A LoRA branch.
pub struct Lora {
    /// A [r, in].
    pub a: Tensor,
    /// B [out, r].
    pub b: Tensor,
    /// alpha / r (or alpha / √r).
    pub scale: f64,
    /// The dropout on the branch's input, redrawn identically in the backward pass.
    pub dropout: Option<DropoutDraw>,
    /// DoRA's magnitude m [out]: the output becomes `Wx + b + (g − 1)·W·drop(x) +
    /// g·s·B(A(drop(x)))` with `g = m / ‖W + s·BA‖_row`, the norm a constant to the gradient
    /// (PEFT's `tuners/lora/dora.py`, as `peft::lora` computes it).
    pub magnitude: Option<Tensor>,
}

impl Lora {
    /// The dropout mask for `x` [rows, in], if the branch has dropout: drawn as
    /// `ForwardCtx::dropout` draws it (`DropoutDraw::tensor`), so every path on a device sees
    /// the same one.
    fn mask(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (rows, cols) = x.dims2()?;
        self.dropout
            .map(|draw| draw.tensor(rows, cols, x.device(), x.dtype()))
            .transpose()
    }

    /// The branch's input: `x` with `mask` applied.
    fn input(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(match mask {
            Some(m) => (x * m)?,
            None => x.clone(),
        })
    }

    /// DoRA's row norms ‖W + s·BA‖ (f32, then in `m`'s dtype) and its gain `g = m / norms`
    /// in `dtype`.
    fn gain(&self, weight: &Tensor, m: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let delta = (self.b.matmul(&self.a)?.to_dtype(DType::F32)? * self.scale)?;
        let norms = row_norms(&(weight.to_dtype(DType::F32)? + delta)?)?.to_dtype(m.dtype())?;
        let g = m.broadcast_div(&norms)?.to_dtype(dtype)?;
        Ok((norms, g))
    }
}

/// An IA³ scale: `l` [in] on the input of a feed-forward module, else [out] on the output
/// (bias included), as PEFT computes it.
pub struct Ia3 {
    /// The scales, flattened.
    pub l: Tensor,
    /// Whether they scale the input.
    pub feedforward: bool,
}

/// Where the gradients of a trained weight and bias go.
#[derive(Default)]
pub struct Trained {
    /// The weight's sink, where it is trained.
    pub weight: Option<Sink>,
    /// The bias's sink, where it is trained.
    pub bias: Option<Sink>,
}

/// One of a layer's seven projections.
pub struct Projection {
    /// W [out, in], detached; a quantized one is widened for each use and dropped after it.
    pub weight: BaseWeight,
    /// b [out], detached.
    pub bias: Option<Tensor>,
    /// What of W and b the method trains: never with an adapter on the projection, so W
    /// sees the input and the output's gradient as they are.
    pub trained: Trained,
    /// The LoRA branch, if the projection has one.
    pub lora: Option<Lora>,
    /// The IA³ scale, if the projection has one.
    pub ia3: Option<Ia3>,
}

impl Projection {
    /// `x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ` for `x` [rows, in], scaled by IA³ where it applies.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.ia3 {
            Some(Ia3 {
                l,
                feedforward: true,
            }) => self.unscaled(&x.broadcast_mul(l)?),
            Some(Ia3 { l, .. }) => Ok(self.unscaled(x)?.broadcast_mul(l)?),
            None => self.unscaled(x),
        }
    }

    fn unscaled(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.weight.dense()?;
        let mut y = x.matmul(&weight.t()?)?;
        if let Some(l) = &self.lora {
            let mask = l.mask(x)?;
            let input = Lora::input(x, mask.as_ref())?;
            let z = (input.matmul(&l.a.t()?)?.matmul(&l.b.t()?)? * l.scale)?;
            y = match &l.magnitude {
                None => (y + z)?,
                Some(m) => {
                    let (_, g) = l.gain(&weight, m, x.dtype())?;
                    // W·drop(x): the base product itself when there is no dropout.
                    let u = match mask {
                        Some(_) => input.matmul(&weight.t()?)?,
                        None => y.clone(),
                    };
                    let scaled =
                        (u.broadcast_mul(&g.affine(1.0, -1.0)?)? + z.broadcast_mul(&g)?)?;
                    (y + scaled)?
                }
            };
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }

    /// dL/dx for `dy` [rows, out], and the gradients of what the projection trains: (dL/dA,
    /// dL/dB, and DoRA's dL/dm) of a LoRA branch, or dL/dl of an IA³ scale.
    /// A trained weight's gradient `dyᵀ·x` and a trained bias's go to their sinks.
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        if let Some(sink) = &self.trained.weight {
            sink.put(dy.t()?.matmul(x)?)?;
        }
        if let Some(sink) = &self.trained.bias {
            sink.put(dy.to_dtype(DType::F32)?.sum(0)?)?;
        }
        match &self.ia3 {
            None => self.unscaled_backward(x, dy),
            Some(Ia3 {
                l,
                feedforward: true,
            }) => {
                let (g, _) = self.unscaled_backward(&x.broadcast_mul(l)?, dy)?;
                let dl = (&g * x)?.sum(0)?;
                Ok((g.broadcast_mul(l)?, vec![dl]))
            }
            Some(Ia3 { l, .. }) => {
                let dl = (dy * self.unscaled(x)?)?.sum(0)?;
                let (dx, _) = self.unscaled_backward(x, &dy.broadcast_mul(l)?)?;
                Ok((dx, vec![dl]))
            }
        }
    }

    fn unscaled_backward(&self, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let weight = self.weight.dense()?;
        let Some(l) = &self.lora else {
            return Ok((dy.matmul(&weight)?, Vec::new()));
        };
        let mask = l.mask(x)?;
        let input = Lora::input(x, mask.as_ref())?;
        let low = input.matmul(&l.a.t()?)?;
        // DoRA: the branch's output is scaled by g, W·drop(x) by g − 1, and m learns from both.
        let (dy_branch, dy_dropped_base, dm) = match &l.magnitude {
            None => (dy.clone(), None, None),
            Some(m) => {
                let (norms, g) = l.gain(&weight, m, x.dtype())?;
                let u = input.matmul(&weight.t()?)?;
                let z = (low.matmul(&l.b.t()?)? * l.scale)?;
                let dm = (dy * (u + z)?)?
                    .sum(0)?
                    .to_dtype(m.dtype())?
                    .broadcast_div(&norms)?;
                let dy_base = dy.broadcast_mul(&g.affine(1.0, -1.0)?)?;
                (dy.broadcast_mul(&g)?, Some(dy_base), Some(dm))
            }
        };
        // dL/d(input·Aᵀ), [rows, r].
        let d_low = (dy_branch.matmul(&l.b)? * l.scale)?;
        let da = d_low.t()?.matmul(&input)?;
        let db = (dy_branch.t()?.matmul(&low)? * l.scale)?;
        let mut d_input = d_low.matmul(&l.a)?;
        // W sees x directly (dy) and, for DoRA, its dropped-out input (dy·(g − 1)): one
        // product when there is no dropout, the two inputs being the same.
        let mut dy_base = dy.clone();
        match (dy_dropped_base, &mask) {
            (Some(d), Some(_)) => d_input = (d_input + d.matmul(&weight)?)?,
            (Some(d), None) => dy_base = (dy_base + d)?,
            (None, _) => {}
        }
        if let Some(mask) = &mask {
            d_input = (d_input * mask)?;
        }
        let mut grads = vec![da, db];
        grads.extend(dm);
        Ok(((dy_base.matmul(&weight)? + d_input)?, grads))
    }
}
