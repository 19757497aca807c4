//! LoRA (Hu et al. 2021) with PEFT's semantics: `y = Wx + s·B(A(dropout(x)))`,
//! `s = alpha / r` (or `alpha / √r` with rsLoRA), A Kaiming-uniform, B zero.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{EngineError, Result};
use crate::model::ops::{linear_matmul, ForwardCtx, SplitMix64};

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
}

impl LoraAdapter {
    /// PEFT's default initialisation: A ~ U(-1/√in, 1/√in) (Kaiming-uniform with a = √5),
    /// B = 0. Returns the adapter and its two trainable variables.
    pub fn init(
        fan_in: usize,
        fan_out: usize,
        settings: &LoraSettings,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Var, Var)> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut rng = SplitMix64::new(seed);
        let a: Vec<f32> = (0..settings.r * fan_in)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a =
            Var::from_tensor(&Tensor::from_vec(a, (settings.r, fan_in), device)?.to_dtype(dtype)?)?;
        let b = Var::zeros((fan_out, settings.r), dtype, device)?;
        Ok((Self::from_vars(&a, &b, settings), a, b))
    }

    /// An adapter over existing variables (loaded or resumed weights).
    pub fn from_vars(a: &Var, b: &Var, settings: &LoraSettings) -> Self {
        Self {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: settings.scale(),
            dropout: settings.lora_dropout,
        }
    }

    /// The adapter's contribution `s·B(A(dropout(x)))`.
    pub fn delta(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let x = ctx.dropout(x, self.dropout)?;
        let h = linear_matmul(&x, &self.a)?;
        Ok((linear_matmul(&h, &self.b)? * self.scale)?)
    }
}
