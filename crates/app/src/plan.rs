//! What a method on a model costs before anything is trained: PEFT's parameter line and the
//! predicted peak memory, with whether it fits this machine (or, planning for a GPU, which
//! change makes it fit a common card).

use std::path::Path;

use peft_studio_engine::library::weights::held_formats;
use peft_studio_engine::memory::{estimate, estimate_t5, gpu_fit, machine_fit, StepShape};
use peft_studio_engine::model::load::{base_formats, weights_of, WeightFiles};
use peft_studio_engine::model::t5::{is_t5, T5Config};
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::plan::{count_params, count_params_t5, ParamCounts};
use peft_studio_engine::sysinfo::available_memory_bytes;
use serde::Serialize;

pub use peft_studio_engine::memory::MemoryEstimate;
pub use peft_studio_engine::model::quantized::{Quantization, QUANTIZATIONS};

use crate::error::Result;
use crate::models::resolve_model;
use crate::runs::{MethodConfig, Precision};

/// The step a plan is made for.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// A model folder, its config.json, or an installed model's name.
    pub model: std::path::PathBuf,
    /// The method and its settings.
    pub method: MethodConfig,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// With gradient checkpointing.
    pub checkpointing: bool,
    /// The number format training computes in.
    pub precision: Precision,
    /// The projections held quantized (a GGUF base counts the types it stores).
    pub quantize: Option<Quantization>,
    /// Plan for the CPU (true) or a GPU (false); `None` for this build's device.
    pub cpu: Option<bool>,
}

/// What a method on a model costs.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// PEFT's line: `trainable params: … || all params: … || trainable%: …`.
    pub line: String,
    /// Parameters trained.
    pub trainable: u64,
    /// All parameters.
    pub total: u64,
    /// Predicted peak memory, by part (`None` where the planner does not cover the model:
    /// T5 for now).
    pub memory: Option<MemoryEstimate>,
    /// Its total in bytes.
    pub memory_total: Option<u64>,
    /// Memory available on this machine now, in bytes.
    pub available: Option<u64>,
    /// Whether it fits: this machine's memory on the CPU, common cards on a GPU.
    pub fit: Option<String>,
    /// The device runs train on (this build's: the CPU unless built with a GPU feature).
    pub device: String,
    /// The type a GGUF base stores its projections in (`Q4_K`), which it trains with:
    /// `quantize` does not apply to it.
    pub stored_quantization: Option<String>,
    /// The projections' format the estimate assumed (stored or `quantize`), if not `precision`.
    pub projections: Option<String>,
}

/// Counts and predicted peak memory of `request`.
pub fn plan(request: &PlanRequest) -> Result<Plan> {
    let resolved = resolve_model(&request.model)?;
    let cpu = request
        .cpu
        .unwrap_or_else(|| peft_studio_engine::device::default_device().is_cpu());
    let step = |quantized| StepShape {
        batch: request.batch_size.max(1),
        seq_len: request.seq_len.max(1),
        dtype: request.precision.dtype(),
        cpu,
        checkpointing: request.checkpointing,
        quantized,
    };
    if is_t5(&resolved) {
        return plan_t5(&resolved, &request.method, step(None));
    }
    let cfg = LlamaConfig::from_path(&resolved)?;
    // A config.json given alone plans for the folder it is in.
    let dir = match resolved.is_file() {
        true => resolved.parent().map(Path::to_path_buf).unwrap_or_default(),
        false => resolved,
    };
    let method = &request.method;
    let mut counts = count_params(&cfg, method)?;
    // PEFT's "all params" of a multimodal model includes its vision tower.
    counts.total += peft_studio_engine::library::weights::outside_decoder_parameters(&cfg, &dir)?;
    let held = (
        request.precision.dtype(),
        cpu,
        method.kind.keeps_base_frozen(),
    );
    let quantized = held_formats(&cfg, &dir, request.quantize, held)?;
    let step = step(quantized);
    let stored = match weights_of(&dir) {
        Ok(WeightFiles::Gguf(_)) => base_formats(&dir, None)?.map(|f| f.projections.to_string()),
        _ => None,
    };
    let memory = estimate(&cfg, method, step)?;
    let fit = match cpu {
        true => machine_fit(memory.total()),
        false => Some(gpu_fit(&cfg, method, step)?),
    };
    Ok(Plan {
        stored_quantization: stored,
        projections: quantized.map(|f| f.projections.to_string()),
        ..Plan::of(counts, memory, fit)
    })
}

impl Plan {
    /// The plan of `counts` and `memory` on this build's device, with `fit` said of it; no
    /// quantized projections.
    fn of(counts: ParamCounts, memory: MemoryEstimate, fit: Option<String>) -> Plan {
        Plan {
            line: counts.to_string(),
            trainable: counts.trainable,
            total: counts.total,
            memory_total: Some(memory.total()),
            memory: Some(memory),
            available: available_memory_bytes(),
            fit,
            device: crate::launch::device_name(),
            stored_quantization: None,
            projections: None,
        }
    }
}

/// A T5's plan: PEFT's line and the predicted peak (the composed ops; on a GPU as on the
/// CPU, where no card table applies yet).
fn plan_t5(dir: &Path, method: &MethodConfig, step: StepShape) -> Result<Plan> {
    let cfg = T5Config::from_path(dir)?;
    let counts = count_params_t5(&cfg, method)?;
    let memory = estimate_t5(&cfg, method, step)?;
    let fit = match step.cpu {
        true => machine_fit(memory.total()),
        false => None,
    };
    Ok(Plan::of(counts, memory, fit))
}
