//! A method's starting values from the model's config alone: what `MethodConfig::apply_with`
//! gives the loaded model, for the methods whose start does not read the weights. A hand-off's
//! bundle starts from them, so that a base too large for this machine is never loaded here.

use candle_core::{DType, Device, Tensor};

use super::{linear_module_names, MethodConfig, MethodKind};
use crate::error::Result;
use crate::model::adapters::lora::initial_a;
use crate::model::LlamaConfig;
use crate::ops::SplitMix64;

impl MethodConfig {
    /// The trainable tensors before training, by their PEFT names, in f32 (rounded through
    /// `dtype`, the type the run holds them in): LoRA and rsLoRA (A drawn from `(seed, linear
    /// index)`, B zero) and IA³ (ones). `None` where the start needs the weights (DoRA's
    /// magnitudes, prompt tuning from text) or is them (freeze, full).
    pub fn initial_values(
        &self,
        cfg: &LlamaConfig,
        seed: u64,
        dtype: DType,
    ) -> Result<Option<Vec<(String, Tensor)>>> {
        self.validate(cfg)?;
        let cpu = Device::Cpu;
        let rounded =
            |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_dtype(DType::F32)?) };
        let mut out = Vec::new();
        match self.kind {
            MethodKind::Lora if !self.use_dora => {
                let targets = self.lora_targets(cfg)?;
                let r = self.r;
                let linears = linear_module_names(cfg).into_iter().enumerate();
                for (i, (name, fan_in, fan_out)) in linears {
                    if !targets.iter().any(|(n, _, _)| *n == name) {
                        continue;
                    }
                    let a = initial_a(r, fan_in, SplitMix64::mix(seed, i as u64));
                    let a = Tensor::from_vec(a, (r, fan_in), &cpu)?;
                    out.push((format!("{name}.lora_A.weight"), rounded(a)?));
                    let b = Tensor::zeros((fan_out, r), DType::F32, &cpu)?;
                    out.push((format!("{name}.lora_B.weight"), b));
                }
            }
            MethodKind::Ia3 => {
                for (name, fan_in, fan_out, feedforward) in self.ia3_targets(cfg)? {
                    let shape = if feedforward {
                        (1, fan_in)
                    } else {
                        (fan_out, 1)
                    };
                    out.push((
                        format!("{name}.ia3_l"),
                        Tensor::ones(shape, DType::F32, &cpu)?,
                    ));
                }
            }
            _ => return Ok(None),
        }
        Ok(Some(out))
    }
}
