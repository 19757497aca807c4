//! LoRA adapters as llama.cpp loads them (docs/FORMATS.md §6): a GGUF file with
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per wrapped
//! layer `<gguf tensor>.weight.lora_a` (ne = [in, r]) and `.lora_b` (ne = [r, out]), in F32.
//! For the `llama` architecture the rows of q/k `lora_b` get llama.cpp's rotary permutation
//! (§8); rsLoRA's `alpha/√r` is written as alpha·√r, since llama.cpp scales by alpha / r.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use super::write::{gguf_tensor, write_gguf};
use crate::error::{EngineError, Result};
use crate::model::gguf::tensors::{gguf_module, permute};
use crate::model::LlamaConfig;
use crate::peft::{MethodConfig, MethodKind};

/// The GGUF architecture of a model, as llama.cpp names it.
pub fn gguf_architecture(cfg: &LlamaConfig) -> Result<&'static str> {
    match cfg.model_type.as_str() {
        "llama" | "mistral" => Ok("llama"),
        "qwen2" => Ok("qwen2"),
        "qwen3" => Ok("qwen3"),
        "gemma2" => Ok("gemma2"),
        "gemma3_text" => Ok("gemma3"),
        "phi3" => Ok("phi3"),
        other => Err(EngineError::config(
            "model_type",
            format!("`{other}` has no llama.cpp LoRA mapping here"),
        )),
    }
}

/// Writes the LoRA `params` (named `<module>.lora_A.weight` / `.lora_B.weight`, as trained)
/// of a model described by `cfg` to the GGUF file `out`.
pub fn write_gguf_lora(
    cfg: &LlamaConfig,
    method: &MethodConfig,
    params: &[(String, Tensor)],
    out: &Path,
) -> Result<()> {
    if method.kind != MethodKind::Lora || method.use_dora {
        return Err(EngineError::config(
            "format",
            format!(
                "llama.cpp loads plain LoRA adapters only; a {} adapter cannot be written as a GGUF LoRA (export it merged instead)",
                if method.use_dora { "DoRA".to_string() } else { method.kind.to_string() }
            ),
        ));
    }
    let arch = gguf_architecture(cfg)?;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, a) in params {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b = params
            .iter()
            .find(|(n, _)| *n == format!("{module}.lora_B.weight"))
            .map(|(_, t)| t)
            .ok_or_else(|| {
                EngineError::config("params", format!("`{module}` has lora_A but no lora_B"))
            })?;
        let gguf = gguf_module(module, &cfg.family).ok_or_else(|| {
            EngineError::config(
                "target_modules",
                format!("`{module}` has no llama.cpp tensor"),
            )
        })?;
        let b = match (arch, gguf.rsplit('.').next()) {
            ("llama", Some("attn_q")) => permute(b, cfg.num_attention_heads)?,
            ("llama", Some("attn_k")) => permute(b, cfg.num_key_value_heads)?,
            _ => b.clone(),
        };
        tensors.push((
            format!("{gguf}.weight.lora_a"),
            gguf_tensor(a, GgmlDType::F32)?,
        ));
        tensors.push((
            format!("{gguf}.weight.lora_b"),
            gguf_tensor(&b, GgmlDType::F32)?,
        ));
    }
    if tensors.is_empty() {
        return Err(EngineError::config(
            "params",
            "the run holds no LoRA matrices",
        ));
    }
    tensors.sort_by(|x, y| x.0.cmp(&y.0));
    // llama.cpp scales by alpha / r: rsLoRA's alpha / √r is alpha·√r over r.
    let r = method.r as f64;
    let alpha = if method.use_rslora {
        method.lora_alpha * r.sqrt()
    } else {
        method.lora_alpha
    };
    let metadata = [
        ("general.type", Value::String("adapter".into())),
        ("general.architecture", Value::String(arch.into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(alpha as f32)),
    ]
    .map(|(k, v)| (k.to_string(), v));
    write_gguf(out, &metadata, &tensors)
}
