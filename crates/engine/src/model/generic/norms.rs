//! A decoder layer's RMSNorms inside the generic layer: weights applied as `w + offset` in
//! f32 (Gemma's `1 + w`), and a trained weight's gradient (freeze, full fine-tuning) handed
//! to its sink.

use candle_core::{DType, Tensor};

use super::elementwise::{rms_norm, rms_norm_backward, rms_norm_weight_gradient};
use super::handoff::{handed, Sink};
use crate::error::Result;
use crate::model::fused::layer::LayerParts;

/// A norm weight as applied (`w + offset`, in f32), and where its gradient goes if trained.
pub struct Norm {
    w: Tensor,
    trained: Option<Sink>,
}

impl Norm {
    /// The norm of `w`; a trained one's tensor and sink join `trained`.
    pub fn new(w: &Tensor, offset: f64, trained: &mut Vec<(Tensor, Sink)>) -> Result<Self> {
        Ok(Self {
            w: w.detach().to_dtype(DType::F32)?.affine(1.0, offset)?,
            trained: handed(w, trained),
        })
    }

    /// `x` normed, and `rstd` for the backward pass.
    pub fn forward(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        rms_norm(x, &self.w, eps)
    }

    /// dL/dx for `dy`, `x` the norm's input; a trained weight's gradient goes to its sink.
    pub fn backward(&self, x: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<Tensor> {
        if let Some(sink) = &self.trained {
            sink.put(rms_norm_weight_gradient(x, rstd, dy)?)?;
        }
        rms_norm_backward(x, &self.w, rstd, dy)
    }
}

/// A layer's norms.
pub struct Norms {
    /// Before attention and before the MLP.
    pub input: Norm,
    pub mlp: Norm,
    /// Of the attention's and the MLP's outputs (Gemma).
    pub outputs: Option<(Norm, Norm)>,
    /// Of each query and key head (Qwen3, Gemma 3).
    pub qk: Option<(Norm, Norm)>,
}

impl Norms {
    pub fn new(parts: &LayerParts, trained: &mut Vec<(Tensor, Sink)>) -> Result<Self> {
        let offset = parts.norm_offset;
        let mut pair = |p: Option<(&Tensor, &Tensor)>| -> Result<Option<(Norm, Norm)>> {
            p.map(|(a, b)| {
                Ok((
                    Norm::new(a, offset, trained)?,
                    Norm::new(b, offset, trained)?,
                ))
            })
            .transpose()
        };
        let (outputs, qk) = (pair(parts.output_norms)?, pair(parts.qk_norm)?);
        Ok(Self {
            input: Norm::new(parts.input_norm, offset, trained)?,
            mlp: Norm::new(parts.post_norm, offset, trained)?,
            outputs,
            qk,
        })
    }
}

/// `t` normed where there is a norm, else `t`.
pub fn normed(t: Tensor, norm: Option<&Norm>, eps: f64) -> Result<Tensor> {
    Ok(match norm {
        Some(n) => n.forward(&t, eps)?.0,
        None => t,
    })
}

/// dL/dt of [`normed`] for `dy`, `t` the norm's input.
pub fn normed_backward(
    t: Option<&Tensor>,
    norm: Option<&Norm>,
    eps: f64,
    dy: Tensor,
) -> Result<Tensor> {
    Ok(match (t, norm) {
        (Some(t), Some(n)) => {
            let (_, rstd) = n.forward(t, eps)?;
            n.backward(t, &rstd, &dy)?
        }
        _ => dy,
    })
}
