//! The method picker: what each method is, and what a choice costs before training.

use peft_studio_engine::library::{resolve, studio_home};
use peft_studio_engine::memory::{estimate, MemoryEstimate, StepShape};
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
    quantize: Option<peft_studio_engine::model::quantized::Quantization>,
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
            quantized: peft_studio_engine::model::load::base_formats(&dir, quantize)?,
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
        })
    })
    .await
}
