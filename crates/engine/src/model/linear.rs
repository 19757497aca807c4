//! A linear layer that PEFT methods can wrap without copying the base weight.

use candle_core::Tensor;

use super::base_weight::BaseWeight;
use super::frozen::frozen_linear;
use super::fused::{
    self,
    linear::{LinearParts, LoraParts},
};
use crate::error::Result;
use crate::model::adapters::ia3::Ia3Scale;
use crate::model::adapters::lora::LoraAdapter;
use crate::ops::{linear_matmul, ForwardCtx};

/// `y = x Wᵀ + b`, plus the adapter's contribution when one is attached.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Module path as in transformers, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// Weight [out_features, in_features], quantized when the base is.
    pub weight: BaseWeight,
    /// Optional bias [out_features].
    pub bias: Option<Tensor>,
    /// The LoRA adapter wrapping this layer, if any.
    pub lora: Option<LoraAdapter>,
    /// The IA³ vector scaling this layer, if any.
    pub ia3: Option<Ia3Scale>,
}

impl Linear {
    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.dims().1
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.dims().0
    }

    /// Applies the layer to `x` [..., in_features].
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let scaled_input;
        let x = match &self.ia3 {
            Some(ia3) => {
                scaled_input = ia3.scale_input(x)?;
                &scaled_input
            }
            None => x,
        };
        let mut y = match self.fused_parts(x, ctx) {
            Some(parts) => fused::linear::frozen_linear(x, parts)?,
            None => self.composed(x, ctx)?,
        };
        if let Some(ia3) = &self.ia3 {
            y = ia3.scale_output(&y)?;
        }
        Ok(y)
    }

    /// The layer as the fused ops take it, when they can compute it: on the CPU, frozen
    /// weight and bias, LoRA without DoRA or active dropout (IA³ scales around it).
    pub fn fused_parts(&self, x: &Tensor, ctx: &ForwardCtx) -> Option<LinearParts<'_>> {
        let dropout = self
            .lora
            .as_ref()
            .is_some_and(|l| ctx.dropout_active(l.dropout));
        self.fusable(x).filter(|_| !dropout)
    }

    /// [`Self::fused_parts`] whatever the LoRA branch's dropout: the fused decoder layer
    /// draws the masks itself (`ForwardCtx::draw_dropout`).
    pub fn fusable(&self, x: &Tensor) -> Option<LinearParts<'_>> {
        let plain = self.lora.as_ref().is_none_or(|l| l.magnitude.is_none());
        (fused::applies(x) && plain)
            .then(|| self.frozen_parts())
            .flatten()
    }

    /// The parts of a frozen projection with LoRA (DoRA included) or nothing, on any device:
    /// what a whole-layer op (`fused::layer` on the CPU, without DoRA; `generic::layer`
    /// elsewhere) takes.
    pub fn frozen_parts(&self) -> Option<LinearParts<'_>> {
        self.is_frozen().then(|| self.parts())
    }

    /// Whether neither the weight nor the bias is trained.
    pub fn is_frozen(&self) -> bool {
        !self.weight.is_variable() && self.bias.as_ref().is_none_or(|b| !b.is_variable())
    }

    /// The projection's parts, trained or frozen (`generic::layer` takes trained ones).
    pub fn parts(&self) -> LinearParts<'_> {
        let lora = self.lora.as_ref().map(|l| LoraParts {
            a: &l.a,
            b: &l.b,
            scale: l.scale,
            magnitude: l.magnitude.as_ref(),
        });
        LinearParts {
            weight: &self.weight,
            bias: self.bias.as_ref(),
            lora,
        }
    }

    /// The layer from candle's ops: the base product, the adapter, the bias.
    fn composed(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        // A trained weight needs its gradient; a frozen one must not pay for it.
        let mut y = match &self.weight {
            BaseWeight::Dense(w) if w.is_variable() => linear_matmul(x, w)?,
            frozen => frozen_linear(x, frozen)?,
        };
        if let Some(lora) = &self.lora {
            y = lora.forward(x, &self.weight, &y, ctx)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}
