//! RMSNorm, rotary embeddings and SwiGLU with their backward passes, from candle tensor
//! ops (every device). Norms and SwiGLU compute in f32 whatever the model's precision.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// `x · rstd · w` over the last dimension, with `rstd = 1/√(mean(x²) + eps)`; returns the
/// result in `x`'s dtype and `rstd` [rows, 1] in f32 for the backward pass.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let x32 = f32(x)?;
    let rstd = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let y = x32.broadcast_mul(&rstd)?.broadcast_mul(&f32(w)?)?;
    Ok((y.to_dtype(x.dtype())?, rstd))
}

/// dL/dx of [`rms_norm`] for `dy`: `rstd·g − x·rstd³·mean(g·x)` with `g = dy·w`.
pub fn rms_norm_backward(x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let x32 = f32(x)?;
    let g = f32(dy)?.broadcast_mul(&f32(w)?)?;
    let dot = (&g * &x32)?.mean_keepdim(D::Minus1)?;
    let dx = (g.broadcast_mul(rstd)? - x32.broadcast_mul(&(rstd.powf(3.0)? * dot)?)?)?;
    Ok(dx.to_dtype(x.dtype())?)
}

/// Rotary tables for candle's rope kernel: the first half of the model's [seq, head_dim]
/// tables (transformers repeats each frequency twice), and the sine negated for the
/// backward pass (the rotation's transpose).
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    neg_sin: Tensor,
}

impl Rotary {
    /// From the model's `(cos, sin)` tables [seq, head_dim].
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<Self> {
        let half = cos.dim(D::Minus1)? / 2;
        let first =
            |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(D::Minus1, 0, half)?.contiguous()?) };
        let sin = first(sin)?;
        Ok(Self {
            cos: first(cos)?,
            neg_sin: sin.neg()?,
            sin,
        })
    }

    /// `x·cos + rotate_half(x)·sin` for `x` [batch, heads, seq, head_dim].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Self::rotate(x, &self.cos, &self.sin)
    }

    /// dL/dx: the same rotation by the opposite angle.
    pub fn backward(&self, dy: &Tensor) -> Result<Tensor> {
        Self::rotate(dy, &self.cos, &self.neg_sin)
    }

    fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
    }
}

/// `silu(gate) · up`, in the inputs' dtype.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let y = (f32(gate)?.silu()? * f32(up)?)?;
    Ok(y.to_dtype(gate.dtype())?)
}

/// dL/dgate and dL/dup of [`swiglu`] for `dy`, with `s = σ(gate)`:
/// `dy·up·s·(1 + gate·(1 − s))` and `dy·gate·s`.
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (g, u, dy) = (f32(gate)?, f32(up)?, f32(dy)?);
    let s = candle_nn::ops::sigmoid(&g)?;
    let dgate = ((&dy * &u)? * &s)?.mul(&(&g * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
    let dup = ((&dy * &g)? * &s)?;
    Ok((dgate.to_dtype(gate.dtype())?, dup.to_dtype(up.dtype())?))
}
