//! Export of Houlsby and Pfeiffer bottleneck adapters in the adapters library's directory
//! format (docs/FORMATS.md §5): `adapter_config.json` (the adapter's full `BnConfig` inside the
//! library's wrapper) and `adapter.safetensors` with keys
//! `model.layers.{i}.{attention,output}_adapters.adapters.{name}.adapter_{down.0,up}.{weight,bias}`.
//! The library reads it with `load_adapter(dir, use_safetensors=True)`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use crate::error::{EngineError, Result};
use crate::fsutil::{safetensors_bytes, write_atomic};
use crate::model::LlamaConfig;
use crate::peft::{MethodConfig, MethodKind};

/// The `config` the library writes for `DoubleSeqBnConfig` (Houlsby) or `SeqBnConfig`
/// (Pfeiffer) with this reduction factor.
fn bn_config(houlsby: bool, reduction_factor: usize) -> Value {
    let config: BTreeMap<&str, Value> = BTreeMap::from([
        ("adapter_residual_before_ln", json!(false)),
        ("cross_adapter", json!(false)),
        ("dropout", json!(0.0)),
        ("factorized_phm_W", json!(true)),
        ("factorized_phm_rule", json!(false)),
        ("hypercomplex_nonlinearity", json!("glorot-uniform")),
        ("init_weights", json!("bert")),
        ("init_weights_seed", Value::Null),
        ("inv_adapter", Value::Null),
        ("inv_adapter_reduction_factor", Value::Null),
        ("is_parallel", json!(false)),
        ("learn_phm", json!(true)),
        ("leave_out", json!([])),
        ("ln_after", json!(false)),
        ("ln_before", json!(false)),
        ("mh_adapter", json!(houlsby)),
        (
            "non_linearity",
            json!(if houlsby { "swish" } else { "relu" }),
        ),
        ("original_ln_after", json!(true)),
        ("original_ln_before", json!(!houlsby)),
        ("output_adapter", json!(true)),
        ("phm_bias", json!(true)),
        ("phm_c_init", json!("normal")),
        ("phm_dim", json!(4)),
        ("phm_init_range", json!(0.0001)),
        ("phm_layer", json!(false)),
        ("phm_rank", json!(1)),
        ("reduction_factor", json!(reduction_factor)),
        ("residual_before_ln", json!(true)),
        ("scaling", json!(1.0)),
        ("shared_W_phm", json!(false)),
        ("shared_phm_rule", json!(true)),
        ("stochastic_depth", json!(0.0)),
        ("use_gating", json!(false)),
    ]);
    json!(config)
}

/// The key the library stores a studio adapter tensor under (`model.layers.{i}.{site}.{part}`
/// gains `.adapters.{name}` after the site).
fn library_key(name: &str, adapter: &str) -> Option<String> {
    let (site_path, part) = name.split_once("_adapters.")?;
    Some(format!("{site_path}_adapters.adapters.{adapter}.{part}"))
}

/// Writes an adapters-library directory for a Houlsby or Pfeiffer run.
pub fn write_adapters_dir(
    dir: &Path,
    method: &MethodConfig,
    model: &LlamaConfig,
    base_model: &str,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    let houlsby = match method.kind {
        MethodKind::Houlsby => true,
        MethodKind::Pfeiffer => false,
        other => {
            return Err(EngineError::config(
                "format",
                format!(
                    "the adapters-library format holds houlsby and pfeiffer adapters, not {other}"
                ),
            ))
        }
    };
    let adapter = method.kind.as_str();
    let named = tensors
        .iter()
        .map(|(n, t)| {
            let key = library_key(n, adapter).ok_or_else(|| {
                EngineError::config(
                    "format",
                    format!("`{n}` is not a bottleneck adapter tensor"),
                )
            })?;
            Ok((key, t.to_dtype(DType::F32)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = json!({
        "config": bn_config(houlsby, method.reduction_factor),
        "hidden_size": model.hidden_size,
        "model_class": model.architecture,
        "model_name": base_model,
        "model_type": model.model_type,
        "name": adapter,
        "version": "adapters.1.2.0",
    });
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| EngineError::config("adapter_config", e.to_string()))?;
    write_atomic(
        &dir.join("adapter.safetensors"),
        &safetensors_bytes(&named, None)?,
    )?;
    write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}
