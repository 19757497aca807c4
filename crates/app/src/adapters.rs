//! Adapters shared by others, brought into the catalog: PEFT folders and adapters-library
//! folders, checked before they are recorded. Pickled `.bin` weights are refused.

use std::path::Path;

use peft_studio_catalog::{Catalog, NewAdapter};
use peft_studio_engine::EngineError;

use crate::error::Result;

/// The method an adapter's config describes, as the studio names methods.
fn method_of(config: &serde_json::Value, path: &Path) -> Result<String> {
    if let Some(t) = config["peft_type"].as_str() {
        return Ok(match t {
            "LORA" => "lora",
            "IA3" => "ia3",
            "PROMPT_TUNING" => "prompt-tuning",
            "PREFIX_TUNING" => "prefix-tuning",
            other => {
                return Err(EngineError::bad_file(
                    path,
                    format!("peft_type `{other}` is not one the studio loads (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING)"),
                )
                .into())
            }
        }
        .to_string());
    }
    match config["config"]["mh_adapter"].as_bool() {
        Some(true) => Ok("houlsby".into()),
        Some(false) => Ok("pfeiffer".into()),
        None => Err(EngineError::bad_file(
            path,
            "is neither a PEFT config (peft_type) nor an adapters-library bottleneck config",
        )
        .into()),
    }
}

/// Checks the adapter folder `dir` and records it (no run); returns its catalog id.
pub fn import_adapter(catalog: &Catalog, dir: &Path) -> Result<i64> {
    let config_path = dir.join("adapter_config.json");
    let weights = ["adapter_model.safetensors", "adapter.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    let Some(weights) = weights else {
        let pickled = ["adapter_model.bin", "pytorch_adapter.bin"]
            .iter()
            .any(|f| dir.join(f).is_file());
        let why = if pickled {
            "holds pickled .bin weights, which can run code when loaded; convert them to safetensors first (e.g. `PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`)"
        } else {
            "holds no adapter_model.safetensors or adapter.safetensors"
        };
        return Err(EngineError::bad_file(dir, why).into());
    };
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::bad_file(&config_path, e.to_string()))?;
    let method = method_of(&config, &config_path)?;
    // A readable header with at least one tensor: a corrupt or empty file is caught here.
    let tensors = peft_studio_engine::library::weights::header(&weights)?;
    if tensors.is_empty() {
        return Err(EngineError::bad_file(&weights, "holds no tensors").into());
    }
    let base_model = config["base_model_name_or_path"]
        .as_str()
        .or_else(|| config["model_name"].as_str())
        .unwrap_or("unknown")
        .to_string();
    let (sha256, size_bytes) = peft_studio_engine::hash::sha256_file(&weights)?;
    Ok(catalog.add_adapter(&NewAdapter {
        run_id: None,
        path: dir.display().to_string(),
        method,
        base_model,
        sha256,
        size_bytes,
    })?)
}
