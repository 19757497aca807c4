//! The New run form's descriptions (methods, training settings, presets) and what a choice
//! costs before training.

use peft_studio_app::describe::{
    methods, quantizations, FormSettings, MethodInfo, QuantizationView,
};
use peft_studio_app::plan::{plan, Plan, PlanRequest, Quantization};
use peft_studio_app::runs::{MethodConfig, Precision};

use crate::error::{blocking, CommandResult};

/// Every method with its hyperparameters.
#[tauri::command]
pub fn list_methods() -> Vec<MethodInfo> {
    methods()
}

/// The New run form's `[train]` settings, presets, starting values and record formats.
#[tauri::command]
pub fn form_settings() -> FormSettings {
    peft_studio_app::describe::form_settings()
}

/// Every `quantize` choice, the usual first.
#[tauri::command]
pub fn list_quantizations() -> Vec<QuantizationView> {
    quantizations()
}

/// Counts and predicted peak memory of training `method` on `model` (a name or folder), on
/// this build's device.
#[tauri::command]
pub async fn plan_run(
    model: String,
    method: MethodConfig,
    batch_size: usize,
    seq_len: usize,
    checkpointing: Option<bool>,
    precision: Option<Precision>,
    quantize: Option<Quantization>,
) -> CommandResult<Plan> {
    blocking(move || {
        Ok(plan(&PlanRequest {
            model: model.into(),
            method,
            batch_size,
            seq_len,
            checkpointing: checkpointing.unwrap_or(false),
            precision: precision.unwrap_or_default(),
            quantize,
            cpu: None,
        })?)
    })
    .await
}
