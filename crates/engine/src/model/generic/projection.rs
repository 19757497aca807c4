//! A frozen projection `x·Wᵀ + b` with its LoRA branch `s·(drop(x)·Aᵀ)·Bᵀ`, forward and
//! backward from candle tensor ops: the input's gradient and the LoRA matrices', never the
//! frozen weight's.

use candle_core::Tensor;

use crate::error::Result;
use crate::model::ops::DropoutDraw;

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
}

impl Lora {
    /// The branch's input: `x` [rows, in] with the dropout mask applied. The mask is drawn
    /// as `ForwardCtx::dropout` draws it (`DropoutDraw::tensor`), so every path on a device
    /// sees the same one.
    fn input(&self, x: &Tensor) -> Result<Tensor> {
        match &self.dropout {
            None => Ok(x.clone()),
            Some(draw) => Ok((x * self.mask(draw, x)?)?),
        }
    }

    fn mask(&self, draw: &DropoutDraw, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        draw.tensor(rows, cols, x.device(), x.dtype())
    }
}

/// One of a layer's seven projections.
pub struct Projection {
    /// W [out, in], frozen.
    pub weight: Tensor,
    /// b [out], frozen.
    pub bias: Option<Tensor>,
    /// The LoRA branch, if the projection has one.
    pub lora: Option<Lora>,
}

impl Projection {
    /// `x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ` for `x` [rows, in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let low = l.input(x)?.matmul(&l.a.t()?)?;
            y = (y + (low.matmul(&l.b.t()?)? * l.scale)?)?;
        }
        Ok(y)
    }

    /// dL/dx for `dy` [rows, out], and (dL/dA, dL/dB) where there is a LoRA branch.
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let dx = dy.matmul(&self.weight)?;
        let Some(l) = &self.lora else {
            return Ok((dx, None));
        };
        let input = l.input(x)?;
        // dL/d(input·Aᵀ), [rows, r].
        let d_low = (dy.matmul(&l.b)? * l.scale)?;
        let da = d_low.t()?.matmul(&input)?;
        let db = (dy.t()?.matmul(&input.matmul(&l.a.t()?)?)? * l.scale)?;
        let mut d_input = d_low.matmul(&l.a)?;
        if let Some(draw) = &l.dropout {
            d_input = (d_input * l.mask(draw, x)?)?;
        }
        Ok(((dx + d_input)?, Some((da, db))))
    }
}
