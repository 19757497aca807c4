//! A linear layer's weight: a tensor (trained, or frozen in the model's dtype), or a frozen
//! weight kept quantized (`quantized`).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::Tensor;

use super::quantized::QuantizedWeight;
use crate::error::Result;

/// Weight [out_features, in_features] of a linear layer.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// Held as a tensor: trained, or frozen in the model's dtype.
    Dense(Tensor),
    /// Frozen, held in a block format.
    Quantized(Arc<QuantizedWeight>),
}

impl From<Tensor> for BaseWeight {
    fn from(t: Tensor) -> Self {
        Self::Dense(t)
    }
}

impl BaseWeight {
    /// (out_features, in_features).
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Dense(t) => match t.dims() {
                [out, fan_in] => (*out, *fan_in),
                _ => (0, 0),
            },
            Self::Quantized(q) => q.dims(),
        }
    }

    /// The tensor, when the weight is held as one.
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Self::Dense(t) => Some(t),
            Self::Quantized(_) => None,
        }
    }

    /// The weight as a tensor in the model's dtype on its device: itself, or a quantized
    /// weight widened (for one use; the caller drops it).
    pub fn dense(&self) -> Result<Cow<'_, Tensor>> {
        Ok(match self {
            Self::Dense(t) => Cow::Borrowed(t),
            Self::Quantized(q) => Cow::Owned(q.dequantize(&q.device())?),
        })
    }

    /// Rows `ids` [n] (u32) of the weight as [n, cols] in the model's dtype: an embedding
    /// lookup, which widens only the rows it reads.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(t) => Ok(t.index_select(ids, 0)?),
            Self::Quantized(q) => q.embedding(ids),
        }
    }

    /// The device it is on.
    pub fn device(&self) -> candle_core::Device {
        match self {
            Self::Dense(t) => t.device().clone(),
            Self::Quantized(q) => q.device(),
        }
    }

    /// Whether the optimiser trains it (a quantized weight never is).
    pub fn is_variable(&self) -> bool {
        matches!(self, Self::Dense(t) if t.is_variable())
    }

    /// The quantized weight, when the weight is held as one.
    pub fn quantized(&self) -> Option<&QuantizedWeight> {
        match self {
            Self::Dense(_) => None,
            Self::Quantized(q) => Some(q),
        }
    }
}
