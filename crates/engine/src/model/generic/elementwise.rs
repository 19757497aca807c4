//! RMSNorm, rotary embeddings and the gated activations (SwiGLU, GeGLU) with their backward
//! passes, from candle tensor ops (every device). Norms and activations compute in f32
//! whatever the model's precision.

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::model::family::Activation;

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

/// dL/dw of [`rms_norm`] for `dy` (a trained norm): `Σ dy·x·rstd` over every row, [last
/// dim] in f32.
pub fn rms_norm_weight_gradient(x: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    let rows = x.elem_count() / width.max(1);
    let normed = f32(x)?.broadcast_mul(rstd)?;
    Ok((normed * f32(dy)?)?.reshape((rows, width))?.sum(0)?)
}

/// Rotary tables for candle's rope kernel: the first half of the model's [seq, rotary_dim]
/// tables (transformers repeats each frequency twice), and the sine negated for the
/// backward pass (the rotation's transpose). Where the tables are narrower than a head
/// (`partial_rotary_factor`), the head's leading dimensions turn and the rest pass through.
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
        let (d, rotary) = (x.dim(D::Minus1)?, 2 * cos.dim(D::Minus1)?);
        if rotary < d {
            let turned = Self::rotate(&x.narrow(D::Minus1, 0, rotary)?, cos, sin)?;
            let kept = x.narrow(D::Minus1, rotary, d - rotary)?;
            return Ok(Tensor::cat(&[&turned, &kept], D::Minus1)?.contiguous()?);
        }
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
    }
}

/// `act(gate) · up`, in the inputs' dtype: SwiGLU's `silu`, or GeGLU's tanh-approximated
/// GELU (`gelu_pytorch_tanh`, candle's `gelu`).
pub fn gated(gate: &Tensor, up: &Tensor, activation: Activation) -> Result<Tensor> {
    let g = f32(gate)?;
    let act = match activation {
        Activation::Silu => g.silu()?,
        Activation::GeluTanh => g.gelu()?,
    };
    Ok((act * f32(up)?)?.to_dtype(gate.dtype())?)
}

/// √(2/π), tanh-GELU's factor.
const GELU_C: f64 = 0.797_884_560_802_865_4;
/// tanh-GELU's cubic coefficient.
const GELU_A: f64 = 0.044_715;

/// dL/dgate and dL/dup of [`gated`] for `dy`: `dy·up·act'(gate)` and `dy·act(gate)`. SwiGLU,
/// with `s = σ(g)`: `act' = s·(1 + g·(1 − s))`; GeGLU, with `t = tanh(c·(g + a·g³))`:
/// `act = ½·g·(1 + t)`, `act' = ½·(1 + t) + ½·g·(1 − t²)·c·(1 + 3a·g²)`.
pub fn gated_backward(
    gate: &Tensor,
    up: &Tensor,
    dy: &Tensor,
    activation: Activation,
) -> Result<(Tensor, Tensor)> {
    let (g, u, dy) = (f32(gate)?, f32(up)?, f32(dy)?);
    let (act, slope) = match activation {
        Activation::Silu => {
            let s = candle_nn::ops::sigmoid(&g)?;
            let slope = (&s * (&g * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
            ((&g * &s)?, slope)
        }
        Activation::GeluTanh => {
            let g2 = g.sqr()?;
            let inner = ((&g2 * GELU_A)?.affine(1.0, 1.0)? * &g)?.affine(GELU_C, 0.0)?;
            let t = inner.tanh()?;
            let half_one_plus_t = t.affine(0.5, 0.5)?;
            let act = (&g * &half_one_plus_t)?;
            let d_inner = g2.affine(3.0 * GELU_A * GELU_C, GELU_C)?;
            let slope = (half_one_plus_t + ((&g * t.sqr()?.affine(-0.5, 0.5)?)? * d_inner)?)?;
            (act, slope)
        }
    };
    let dgate = ((&dy * &u)? * slope)?;
    let dup = (dy * act)?;
    Ok((dgate.to_dtype(gate.dtype())?, dup.to_dtype(up.dtype())?))
}
