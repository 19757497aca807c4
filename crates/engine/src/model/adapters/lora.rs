//! LoRA (Hu et al. 2021) with PEFT's semantics: `y = Wx + s·B(A(dropout(x)))`,
//! `s = alpha / r` (or `alpha / √r` with rsLoRA), A Kaiming-uniform, B zero.
//!
//! DoRA (Liu et al. 2024) as PEFT computes it (`tuners/lora/dora.py`): a magnitude vector `m`
//! per output row, initialised to the row norms of `W + s·BA`, and
//! `y = Wx + b + (g − 1)·W·dropout(x) + g·s·B(A(dropout(x)))` with `g = m / ‖W + s·BA‖_row`,
//! the norm detached from the graph (without dropout this is `b + g·(Wx + s·BAx)`).

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{EngineError, Result};
use crate::model::base_weight::BaseWeight;
use crate::model::frozen::frozen_linear;
use crate::ops::{linear_matmul, ForwardCtx, SplitMix64};

/// The LoRA hyper-parameters, as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank of the update.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scaling numerator.
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA: also learn a magnitude per output row.
    #[serde(default)]
    pub use_dora: bool,
}

fn default_r() -> usize {
    8
}

fn default_alpha() -> f64 {
    8.0
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            r: default_r(),
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            use_rslora: false,
            use_dora: false,
        }
    }
}

impl LoraSettings {
    /// Rejects settings PEFT would reject.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(EngineError::config("r", "the LoRA rank must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(EngineError::config(
                "lora_dropout",
                format!("{} is not in [0, 1)", self.lora_dropout),
            ));
        }
        if !self.lora_alpha.is_finite() {
            return Err(EngineError::config("lora_alpha", "must be a finite number"));
        }
        Ok(())
    }

    /// The factor `s` applied to `B·A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// One layer's LoRA matrices.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// A [r, in_features].
    pub a: Tensor,
    /// B [out_features, r].
    pub b: Tensor,
    /// `s`.
    pub scale: f64,
    /// Dropout probability on the input.
    pub dropout: f64,
    /// DoRA's magnitude vector [out_features], when DoRA is on.
    pub magnitude: Option<Tensor>,
}

/// An adapter's trainable variables: A, B and (DoRA) the magnitude.
pub struct LoraVars {
    /// A [r, in_features].
    pub a: Var,
    /// B [out_features, r].
    pub b: Var,
    /// Magnitude [out_features].
    pub magnitude: Option<Var>,
}

/// LoRA's A of an `r × fan_in` projection before training: uniform in ±1/√fan_in (PyTorch's
/// Kaiming-uniform bound with a = √5, as PEFT initialises it), drawn from `seed`.
pub(crate) fn initial_a(r: usize, fan_in: usize, seed: u64) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut rng = SplitMix64::new(seed);
    (0..r * fan_in)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

impl LoraAdapter {
    /// PEFT's default initialisation: A ~ U(-1/√in, 1/√in) (Kaiming-uniform with a = √5),
    /// B = 0, and with DoRA the magnitude = row norms of the base `weight` [out, in].
    pub fn init(
        weight: &BaseWeight,
        settings: &LoraSettings,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, LoraVars)> {
        let (fan_out, fan_in) = weight.dims();
        let a = initial_a(settings.r, fan_in, seed);
        let a =
            Var::from_tensor(&Tensor::from_vec(a, (settings.r, fan_in), device)?.to_dtype(dtype)?)?;
        let b = Var::zeros((fan_out, settings.r), dtype, device)?;
        let magnitude = if settings.use_dora {
            // B = 0, so ‖W + s·BA‖ = ‖W‖.
            let norms = row_norms(&weight.dense()?.to_dtype(dtype)?.to_device(device)?)?;
            Some(Var::from_tensor(&norms)?)
        } else {
            None
        };
        let vars = LoraVars { a, b, magnitude };
        Ok((Self::from_vars(&vars, settings), vars))
    }

    /// An adapter over existing variables (loaded or resumed weights).
    pub fn from_vars(vars: &LoraVars, settings: &LoraSettings) -> Self {
        Self {
            a: vars.a.as_tensor().clone(),
            b: vars.b.as_tensor().clone(),
            scale: settings.scale(),
            dropout: settings.lora_dropout,
            magnitude: vars.magnitude.as_ref().map(|m| m.as_tensor().clone()),
        }
    }

    /// The layer's output: `base` is `x Wᵀ` (no bias) of the wrapped `weight`.
    pub fn forward(
        &self,
        x: &Tensor,
        weight: &BaseWeight,
        base: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let Some(m) = &self.magnitude else {
            return Ok((base + self.delta(x, ctx)?)?);
        };
        let xd = ctx.dropout(x, self.dropout)?;
        let lora = (linear_matmul(&linear_matmul(&xd, &self.a)?, &self.b)? * self.scale)?;
        // The norm is a constant to the gradient, as in PEFT.
        let delta_w = (self.b.detach().matmul(&self.a.detach())? * self.scale)?;
        let norm = row_norms(&(weight.dense()?.detach() + delta_w)?)?.detach();
        let g = m.broadcast_div(&norm)?;
        // With dropout the base term needs W applied to the dropped-out input.
        let base_d = if ctx.dropout_active(self.dropout) {
            frozen_linear(&xd, weight)?
        } else {
            base.clone()
        };
        let scaled = (base_d.broadcast_mul(&(&g - 1.0)?)? + lora.broadcast_mul(&g)?)?;
        Ok((base + scaled)?)
    }

    /// The adapter's contribution `s·B(A(dropout(x)))`.
    pub fn delta(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let x = ctx.dropout(x, self.dropout)?;
        let h = linear_matmul(&x, &self.a)?;
        Ok((linear_matmul(&h, &self.b)? * self.scale)?)
    }
}

/// The L2 norm of each row of a [out, in] matrix, as [out].
pub fn row_norms(w: &Tensor) -> Result<Tensor> {
    Ok(w.sqr()?.sum(1)?.sqrt()?)
}
