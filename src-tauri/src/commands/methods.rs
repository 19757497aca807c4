//! The method picker: what each method is, and what a choice costs before training.

use peft_studio_engine::library::{resolve, studio_home};
use peft_studio_engine::memory::{estimate, MemoryEstimate, StepShape};
use peft_studio_engine::model::load::{base_formats, weights_of, WeightFiles};
use peft_studio_engine::model::quantized::{Quantization, QUANTIZATIONS};
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::peft::describe::{methods, MethodInfo};
use peft_studio_engine::peft::MethodConfig;
use peft_studio_engine::plan::count_params;
use peft_studio_engine::sysinfo::available_memory_bytes;
use serde::Serialize;

use crate::error::{blocking, CommandResult};

/// Every method with its hyperparameters.
#[tauri::command]
pub fn list_methods() -> Vec<MethodInfo> {
    methods()
}

/// A block format a base's projections can be held in, as the hyperparameters step offers it.
#[derive(Debug, Serialize)]
pub struct QuantizationView {
    /// The `quantize` value (`q4_k`).
    pub name: String,
    /// Bits per weight.
    pub bits_per_weight: f64,
}

/// Every `quantize` choice, the usual first.
#[tauri::command]
pub fn list_quantizations() -> Vec<QuantizationView> {
    QUANTIZATIONS
        .iter()
        .map(|q| QuantizationView {
            name: q.name().into(),
            bits_per_weight: q.bits_per_weight(),
        })
        .collect()
}

/// What a method on a model costs, as the method step shows it.
#[derive(Debug, Serialize)]
pub struct PlanView {
    /// PEFT's line: `trainable params: … || all params: … || trainable%: …`.
    pub line: String,
    /// Parameters trained.
    pub trainable: u64,
    /// All parameters.
    pub total: u64,
    /// Predicted peak memory, by part.
    pub memory: MemoryEstimate,
    /// Its total in bytes.
    pub memory_total: u64,
    /// Memory available on this machine now, in bytes.
    pub available: Option<u64>,
    /// The device runs train on (this build's: the CPU unless built with a GPU feature).
    pub device: String,
    /// The type a GGUF base stores its projections in (`Q4_K`), which it trains with:
    /// `quantize` does not apply to it.
    pub stored_quantization: Option<String>,
}

/// Counts and predicted peak memory of training `method` on `model` (a name or folder).
#[tauri::command]
pub async fn plan_run(
    model: String,
    method: MethodConfig,
    batch_size: usize,
    seq_len: usize,
    checkpointing: Option<bool>,
    precision: Option<peft_studio_engine::train::Precision>,
    quantize: Option<Quantization>,
) -> CommandResult<PlanView> {
    blocking(move || {
        let dir = resolve(&studio_home(), model.as_ref())?;
        let cfg = LlamaConfig::from_path(&dir)?;
        let counts = count_params(&cfg, &method)?;
        let step = StepShape {
            batch: batch_size.max(1),
            seq_len: seq_len.max(1),
            dtype: precision.unwrap_or_default().dtype(),
            cpu: peft_studio_engine::run::default_device().is_cpu(),
            checkpointing: checkpointing.unwrap_or(false),
            quantized: base_formats(&dir, quantize)?,
        };
        let stored = match weights_of(&dir) {
            Ok(WeightFiles::Gguf(_)) => {
                base_formats(&dir, None)?.map(|f| f.projections.to_string())
            }
            _ => None,
        };
        let memory = estimate(&cfg, &method, step)?;
        Ok(PlanView {
            line: counts.to_string(),
            trainable: counts.trainable,
            total: counts.total,
            memory_total: memory.total(),
            memory,
            available: available_memory_bytes(),
            device: peft_studio_app::launch::device_name(),
            stored_quantization: stored,
        })
    })
    .await
}
