//! LoRA adapters in llama.cpp's GGUF format (docs/FORMATS.md §6), read back into the studio's
//! form — the inverse of `export::gguf_lora` — so that a GGUF LoRA someone shares can be
//! imported as a PEFT folder: q/k `lora_b` rows un-permuted, the file's single alpha kept.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::export::{write_peft_dir, ExportInfo};
use crate::gguf::lora::gguf_architecture;
use crate::model::gguf::read_content;
use crate::model::gguf::tensors::{dequantized, hf_name, unpermute};
use crate::model::LlamaConfig;
use crate::peft::{MethodConfig, MethodKind, TargetModules};

/// A GGUF LoRA file's content in the studio's naming.
pub struct GgufLora {
    /// Rank (the same for every module).
    pub r: usize,
    /// `adapter.lora.alpha` (llama.cpp scales by alpha / r; 0 means a scale of 1).
    pub alpha: f64,
    /// `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r], sorted.
    pub params: Vec<(String, Tensor)>,
}

/// Reads the GGUF LoRA `path` written for a model of configuration `base` (needed to undo the
/// q/k row permutation and to check that the adapter fits).
pub fn read_gguf_lora(path: &Path, base: &LlamaConfig) -> Result<GgufLora> {
    let bad = |m: String| EngineError::bad_file(path, m);
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let content = read_content(path, &mut file)?;
    let text = |k: &str| match content.metadata.get(k) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    if text("general.type") != Some("adapter") || text("adapter.type") != Some("lora") {
        return Err(bad(
            "is not a llama.cpp LoRA adapter (general.type = adapter, adapter.type = lora)".into(),
        ));
    }
    let arch = gguf_architecture(base)?;
    let file_arch = text("general.architecture").unwrap_or("missing");
    if file_arch != arch {
        return Err(bad(format!(
            "is an adapter for a `{file_arch}` model; the chosen base model is `{arch}`"
        )));
    }
    let alpha = match content.metadata.get("adapter.lora.alpha") {
        Some(Value::F32(a)) => f64::from(*a),
        Some(Value::F64(a)) => *a,
        _ => 0.0,
    };
    let shapes = base.weight_shapes();
    let mut params = Vec::new();
    let mut ranks = std::collections::BTreeSet::new();
    for name in content.tensor_infos.keys() {
        let (weight, part) = name
            .rsplit_once('.')
            .filter(|(_, p)| *p == "lora_a" || *p == "lora_b")
            .ok_or_else(|| bad(format!("tensor `{name}` is not a lora_a or lora_b")))?;
        let hf = hf_name(weight, &base.family)
            .ok_or_else(|| bad(format!("tensor `{name}` names no weight of a {arch} model")))?;
        let (_, shape) = shapes.iter().find(|(n, _)| *n == hf).ok_or_else(|| {
            bad(format!(
                "`{hf}` does not exist in the base model; is the adapter for another model?"
            ))
        })?;
        let t = dequantized(&content, &mut file, name)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let dims = t.dims().to_vec();
        let module = hf.strip_suffix(".weight").unwrap_or(&hf);
        let fits = match (part, dims.as_slice(), shape.as_slice()) {
            ("lora_a", [_, inp], [_, w_in]) => inp == w_in,
            ("lora_b", [out, _], [w_out, _]) => out == w_out,
            _ => false,
        };
        if !fits {
            return Err(bad(format!(
                "`{name}` has shape {dims:?}, which does not fit the base model's `{hf}` {shape:?}; is the adapter for another model?"
            )));
        }
        let t = match (arch, part, weight.split('.').nth(2)) {
            ("llama", "lora_b", Some("attn_q")) => unpermute(&t, base.num_attention_heads)?,
            ("llama", "lora_b", Some("attn_k")) => unpermute(&t, base.num_key_value_heads)?,
            _ => t,
        };
        if part == "lora_a" {
            ranks.insert(dims[0]);
        }
        let side = if part == "lora_a" { "lora_A" } else { "lora_B" };
        params.push((format!("{module}.{side}.weight"), t));
    }
    let r = match ranks.iter().collect::<Vec<_>>().as_slice() {
        [r] => **r,
        [] => return Err(bad("holds no LoRA tensors".into())),
        _ => {
            return Err(bad(format!(
                "uses several ranks ({ranks:?}); the studio imports GGUF LoRAs of one rank"
            )))
        }
    };
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(GgufLora { r, alpha, params })
}

/// Writes the GGUF LoRA `path` as a PEFT folder `out` for the model in `base_dir`.
pub fn gguf_lora_to_peft(path: &Path, base_dir: &Path, out: &Path) -> Result<()> {
    let base = LlamaConfig::from_path(base_dir)?;
    let lora = read_gguf_lora(path, &base)?;
    let mut modules: Vec<String> = lora
        .params
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".lora_A.weight"))
        .map(|m| m.rsplit('.').next().unwrap_or(m).to_string())
        .collect();
    modules.sort();
    modules.dedup();
    let method = MethodConfig {
        kind: MethodKind::Lora,
        r: lora.r,
        // llama.cpp's alpha 0 means "no scaling": PEFT's alpha = r.
        lora_alpha: if lora.alpha > 0.0 {
            lora.alpha
        } else {
            lora.r as f64
        },
        target_modules: Some(TargetModules::List(modules)),
        ..MethodConfig::default()
    };
    let info = ExportInfo {
        base_model: base_dir.display().to_string(),
        task_type: "CAUSAL_LM",
        multimodal_layers: base.multimodal_layers(),
    };
    write_peft_dir(out, &method, &info, &lora.params)
}
