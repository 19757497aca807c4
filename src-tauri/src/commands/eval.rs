//! The Evaluate screen: a base model alone and with recorded adapters or runs' adapters,
//! measured on a file the user picked (`app::eval`), each result kept in the catalog.

use peft_studio_app::eval::{evaluate, EvalRequest, Target};
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;

use super::open_catalog;
use crate::error::{blocking, CommandError, CommandResult};

/// What the screen asks for.
#[derive(Debug, Deserialize)]
pub struct EvalForm {
    /// An installed model's name.
    pub model: String,
    /// Measure the base alone too.
    pub base: bool,
    /// Recorded adapters, by catalog id.
    pub adapters: Vec<i64>,
    /// `perplexity`, `generation` or `choice`.
    pub task: String,
    /// The dataset or task file.
    pub data: std::path::PathBuf,
    /// Record format (`auto`, …).
    pub format: String,
    /// New tokens per answer (generation).
    pub max_new_tokens: usize,
}

/// Progress of an evaluation: which target, items done of total.
#[derive(Debug, Clone, Serialize)]
pub struct EvalProgress {
    /// The target's label.
    pub label: String,
    /// Items done.
    pub done: usize,
    /// Items in all.
    pub total: usize,
}

/// One target's figures.
#[derive(Debug, Serialize)]
pub struct EvalResult {
    /// `base`, the adapter's folder name, or `run N`.
    pub label: String,
    /// The catalog's record (metrics, items, dataset).
    pub evaluation: peft_studio_app::catalog::Evaluation,
}

/// Measures each target; progress goes to `on_progress`.
#[tauri::command]
pub async fn eval_run(
    form: EvalForm,
    on_progress: Channel<EvalProgress>,
    chosen: tauri::State<'_, crate::paths::Chosen>,
) -> CommandResult<Vec<EvalResult>> {
    let data = crate::paths::read_source(&form.data, crate::paths::DATASET, &chosen)?;
    blocking(move || {
        let catalog = open_catalog()?;
        let recorded = catalog.adapters(None)?;
        let mut targets = Vec::new();
        if form.base {
            targets.push(Target::Base);
        }
        for id in &form.adapters {
            let record = recorded.iter().find(|r| r.id == *id).ok_or_else(|| {
                CommandError::with_hint(
                    format!("adapter {id} is not in the catalog"),
                    "pick one from the list",
                )
            })?;
            targets.push(match record.run_id {
                Some(run) if record.path.ends_with("adapter") => Target::Run(run),
                _ => Target::Adapter(record.path.clone().into()),
            });
        }
        let request = EvalRequest {
            model: Some(form.model.into()),
            targets,
            task: form
                .task
                .parse()
                .map_err(|e: String| CommandError::with_hint(e, "pick a task from the list"))?,
            data,
            format: form.format.parse()?,
            max_new_tokens: form.max_new_tokens,
            precision: peft_studio_app::runs::Precision::F32,
        };
        let results = evaluate(&catalog, &request, &mut |label, done, total| {
            let _ = on_progress.send(EvalProgress {
                label: label.to_string(),
                done,
                total,
            });
        })?;
        Ok(results
            .into_iter()
            .map(|r| EvalResult {
                label: r.label,
                evaluation: r.record,
            })
            .collect())
    })
    .await
}
