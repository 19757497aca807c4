//! A bottleneck adapter inside the generic layer (`adapters::bottleneck` says what Houlsby
//! and Pfeiffer compute), forward and backward from candle tensor ops. With `h` a
//! sublayer's output and `r` its input, the stream becomes `h + r + U(f(D(in)) + d) + u`,
//! `in` being `h` (Houlsby, swish) or `h + r` (Pfeiffer, relu). Products run in the model's
//! dtype, the activation in f32.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::adapters::bottleneck::Bottleneck;

/// An adapter's weights, detached: the layer's op hands their gradients back.
pub struct Adapter {
    /// D [width, hidden] and its bias [width].
    down_w: Tensor,
    down_b: Tensor,
    /// U [hidden, width] and its bias [hidden].
    up_w: Tensor,
    up_b: Tensor,
    houlsby: bool,
}

impl Adapter {
    /// The adapter's weights, detached, and the tracked ones in the order [`Self::backward`]
    /// gives their gradients (`adapters::bottleneck::PARTS`).
    pub fn new(adapter: &Bottleneck) -> (Self, [&Tensor; 4]) {
        let tracked = adapter.tensors();
        let [down_w, down_b, up_w, up_b] = tracked.map(Tensor::detach);
        let this = Self {
            down_w,
            down_b,
            up_w,
            up_b,
            houlsby: adapter.is_houlsby(),
        };
        (this, tracked)
    }

    /// What D reads.
    fn input(&self, h: &Tensor, r: &Tensor) -> Result<Tensor> {
        Ok(match self.houlsby {
            true => h.clone(),
            false => (h + r)?,
        })
    }

    /// D's output before the activation [rows, width], in f32.
    fn down(&self, input: &Tensor) -> Result<Tensor> {
        Ok(input
            .matmul(&self.down_w.t()?)?
            .broadcast_add(&self.down_b)?
            .to_dtype(DType::F32)?)
    }

    fn activation(&self, z: &Tensor) -> Result<Tensor> {
        Ok(match self.houlsby {
            true => z.silu()?,
            false => z.relu()?,
        })
    }

    /// The stream after the sublayer whose output is `h` [rows, hidden] and input `r`.
    pub fn forward(&self, h: &Tensor, r: &Tensor) -> Result<Tensor> {
        let z = self.down(&self.input(h, r)?)?;
        let a = self.activation(&z)?.to_dtype(h.dtype())?;
        let up = a.matmul(&self.up_w.t()?)?.broadcast_add(&self.up_b)?;
        Ok(((h + r)? + up)?)
    }

    /// dL/dh, dL/dr and the gradients of D, its bias, U and its bias for `dy`, the stream's
    /// gradient.
    pub fn backward(
        &self,
        h: &Tensor,
        r: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, [Tensor; 4])> {
        let input = self.input(h, r)?;
        let z = self.down(&input)?;
        let a = self.activation(&z)?;
        // swish' = s·(1 + z·(1 − s)); relu' = [z > 0].
        let slope = match self.houlsby {
            true => {
                let s = candle_nn::ops::sigmoid(&z)?;
                (&s * (&z * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?
            }
            false => z.gt(0.0)?.to_dtype(DType::F32)?,
        };
        let dtype = dy.dtype();
        let d_a = dy.matmul(&self.up_w)?.to_dtype(DType::F32)?;
        let d_z = (d_a * slope)?;
        let d_up_w = dy.t()?.matmul(&a.to_dtype(dtype)?)?;
        let d_up_b = dy.to_dtype(DType::F32)?.sum(0)?;
        let d_down_b = d_z.sum(0)?;
        let d_z = d_z.to_dtype(dtype)?;
        let d_down_w = d_z.t()?.matmul(&input)?;
        let d_input = d_z.matmul(&self.down_w)?;
        let through = (dy + d_input)?;
        let (d_h, d_r) = match self.houlsby {
            true => (through, dy.clone()),
            false => (through.clone(), through),
        };
        Ok((d_h, d_r, [d_down_w, d_down_b, d_up_w, d_up_b]))
    }
}
