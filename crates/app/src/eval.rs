//! Evaluation for people (`eval`, the compare view): a base model loaded once and measured
//! alone and with each adapter asked for (switched by detaching and attaching), every result
//! recorded in the catalog against its run.

use std::path::{Path, PathBuf};

use peft_studio_catalog::{Catalog, Evaluation, NewEvaluation};
use peft_studio_engine::device::default_device;
use peft_studio_engine::eval::{evaluate as run_task, Settings};
use peft_studio_engine::hash::sha256_file;
use peft_studio_engine::model::load::load_model_held;
use peft_studio_engine::model::t5::is_t5;
use peft_studio_engine::peft::load::{attach_adapter, detach_adapters};
use peft_studio_engine::tokenizer::TextTokenizer;

pub use peft_studio_engine::data::format::Format;
pub use peft_studio_engine::eval::{Report, Task};

use crate::error::{AppError, Result};
use crate::models::resolve_model;
use crate::runs::Precision;

/// What is measured: the base alone, an adapter folder, or a run's final adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The base model alone.
    Base,
    /// A PEFT adapter folder.
    Adapter(PathBuf),
    /// The final adapter of a run in the catalog.
    Run(i64),
}

/// An evaluation request.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The base model (folder or library name); a run's own model when `None`.
    pub model: Option<PathBuf>,
    /// What to measure, in order.
    pub targets: Vec<Target>,
    /// The task.
    pub task: Task,
    /// The dataset file.
    pub data: PathBuf,
    /// How its records are read (perplexity and generation).
    pub format: Format,
    /// New tokens per answer (generation).
    pub max_new_tokens: usize,
    /// The model's precision.
    pub precision: Precision,
}

/// One target's result, as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluated {
    /// `base`, the adapter's folder name, or `run N`.
    pub label: String,
    /// The evaluation's catalog record.
    pub record: Evaluation,
    /// The figures per item.
    pub report: Report,
}

/// The adapter folder and run of a target.
fn resolve(catalog: &Catalog, target: &Target) -> Result<(String, Option<PathBuf>, Option<i64>)> {
    Ok(match target {
        Target::Base => ("base".into(), None, None),
        Target::Adapter(dir) => {
            let label = dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            (label, Some(dir.clone()), None)
        }
        Target::Run(id) => {
            let run = catalog.run(*id)?;
            let dir = crate::runs::adapter_dir(Path::new(&run.out_dir));
            if !dir.join("adapter_config.json").is_file() {
                return Err(AppError::Invalid(format!(
                    "run {id} has no final adapter in {}: export a checkpoint (`export --run {id}`) and pass it with --adapter",
                    dir.display()
                )));
            }
            (format!("run {id}"), Some(dir), Some(*id))
        }
    })
}

/// Measures every target on the task; `progress(label, done, total)` after each item.
pub fn evaluate(
    catalog: &Catalog,
    request: &EvalRequest,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Vec<Evaluated>> {
    let targets = request
        .targets
        .iter()
        .map(|t| resolve(catalog, t))
        .collect::<Result<Vec<_>>>()?;
    let model_path = match (&request.model, targets.iter().find_map(|t| t.2)) {
        (Some(m), _) => m.clone(),
        (None, Some(run)) => catalog
            .run(run)?
            .model_path
            .map(PathBuf::from)
            .ok_or_else(|| {
                AppError::Invalid(format!("run {run} records no model: pass --model"))
            })?,
        (None, None) => return Err(AppError::Invalid("name the base model (--model)".into())),
    };
    let dir = resolve_model(&model_path)?;
    if is_t5(&dir) {
        return Err(AppError::Invalid(format!(
            "{}: eval measures decoder-only models; T5 is not evaluated yet",
            dir.display()
        )));
    }
    // Evaluation never trains the projections: an f32 model holds bf16 ones as stored.
    let dtype = request.precision.dtype();
    let mut model = load_model_held(&dir, dtype, &default_device(), None, true)?;
    let tok = TextTokenizer::load(&dir, &model.config().eos_token_ids)?;
    let (sha, _) = sha256_file(&request.data)?;
    let settings = Settings {
        data: peft_studio_engine::data::load::DataConfig {
            format: request.format,
            ..Default::default()
        },
        max_new_tokens: request.max_new_tokens,
    };
    let mut out = Vec::with_capacity(targets.len());
    for (label, adapter, run_id) in targets {
        detach_adapters(&mut model);
        if let Some(a) = &adapter {
            attach_adapter(&mut model, a, Some(0.0))?;
        }
        let report = run_task(
            &model,
            &tok,
            request.task,
            &request.data,
            &settings,
            &mut |d, t| progress(&label, d, t),
        )?;
        let new = NewEvaluation {
            run_id,
            model: model_path.display().to_string(),
            adapter: adapter.as_ref().map(|a| a.display().to_string()),
            task: request.task.name().into(),
            dataset: request.data.display().to_string(),
            dataset_sha256: sha.clone(),
            items: report.items,
            metrics: report.metrics.clone(),
        };
        out.push(Evaluated {
            label,
            record: catalog.add_evaluation(&new)?,
            report,
        });
    }
    Ok(out)
}
