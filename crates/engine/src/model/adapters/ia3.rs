//! IA³ (Liu et al. 2022) with PEFT's semantics (`tuners/ia3/layer.py`): a learned vector `l`,
//! initialised to ones, that scales a layer's output (`y = (Wx + b) ⊙ l`, stored [out, 1]) or,
//! for feed-forward modules, its input (`y = W(x ⊙ l) + b`, stored [1, in]).

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;

/// One layer's IA³ vector.
#[derive(Debug, Clone)]
pub struct Ia3Scale {
    /// `l`: [out, 1], or [1, in] for a feed-forward module.
    pub l: Tensor,
    /// Whether `l` scales the input (feed-forward) rather than the output.
    pub feedforward: bool,
}

impl Ia3Scale {
    /// PEFT's initialisation: ones, shaped for the layer.
    pub fn init(
        fan_in: usize,
        fan_out: usize,
        feedforward: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Var)> {
        let shape = if feedforward {
            (1, fan_in)
        } else {
            (fan_out, 1)
        };
        let var = Var::ones(shape, dtype, device)?;
        Ok((Self::from_var(&var, feedforward), var))
    }

    /// A scale over an existing variable (loaded or resumed).
    pub fn from_var(var: &Var, feedforward: bool) -> Self {
        Self {
            l: var.as_tensor().clone(),
            feedforward,
        }
    }

    /// The vector as it multiplies the last dimension.
    fn vector(&self) -> Result<Tensor> {
        Ok(self.l.flatten_all()?)
    }

    /// The layer input a feed-forward module's weight sees.
    pub fn scale_input(&self, x: &Tensor) -> Result<Tensor> {
        if self.feedforward {
            Ok(x.broadcast_mul(&self.vector()?)?)
        } else {
            Ok(x.clone())
        }
    }

    /// The layer output (bias included) of a non-feed-forward module.
    pub fn scale_output(&self, y: &Tensor) -> Result<Tensor> {
        if self.feedforward {
            Ok(y.clone())
        } else {
            Ok(y.broadcast_mul(&self.vector()?)?)
        }
    }
}
