//! Evaluations (`eval`): a base model or an adapter measured on a dataset file, kept against
//! its run (when it has one) so that runs compare on them.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::error::{CatalogError, Result};
use crate::{now, Catalog};

/// An evaluation to record.
#[derive(Debug, Clone)]
pub struct NewEvaluation {
    /// The run whose adapter was measured, if any.
    pub run_id: Option<i64>,
    /// The base model (folder or library name).
    pub model: String,
    /// The adapter folder; `None` for the base alone.
    pub adapter: Option<String>,
    /// `perplexity`, `generation` or `choice`.
    pub task: String,
    /// The dataset file.
    pub dataset: String,
    /// Its SHA-256.
    pub dataset_sha256: String,
    /// Items evaluated.
    pub items: usize,
    /// Metric name → value.
    pub metrics: BTreeMap<String, f64>,
}

/// A recorded evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Catalog id.
    pub id: i64,
    /// The run, if any.
    pub run_id: Option<i64>,
    /// The base model.
    pub model: String,
    /// The adapter folder (`None`: the base).
    pub adapter: Option<String>,
    /// The task.
    pub task: String,
    /// The dataset file.
    pub dataset: String,
    /// Its SHA-256.
    pub dataset_sha256: String,
    /// Items evaluated.
    pub items: i64,
    /// Metric name → value.
    pub metrics: BTreeMap<String, f64>,
    /// Unix seconds.
    pub created_at: f64,
}

impl Catalog {
    /// Records an evaluation; returns its id.
    pub fn add_evaluation(&self, e: &NewEvaluation) -> Result<i64> {
        let metrics = serde_json::to_string(&e.metrics)
            .map_err(|err| CatalogError::Invalid(format!("metrics: {err}")))?;
        self.block(
            sqlx::query_scalar(
                "INSERT INTO evaluations (run_id, model, adapter, task, dataset, dataset_sha256,
                    items, metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(e.run_id)
            .bind(&e.model)
            .bind(&e.adapter)
            .bind(&e.task)
            .bind(&e.dataset)
            .bind(&e.dataset_sha256)
            .bind(e.items as i64)
            .bind(metrics)
            .bind(now())
            .fetch_one(&self.pool),
        )
    }

    /// Evaluations of the given runs (all of them with an empty list), oldest first.
    pub fn evaluations(&self, runs: &[i64]) -> Result<Vec<Evaluation>> {
        let rows = self.block(
            sqlx::query(
                "SELECT id, run_id, model, adapter, task, dataset, dataset_sha256, items, metrics,
                    created_at FROM evaluations ORDER BY created_at, id",
            )
            .fetch_all(&self.pool),
        )?;
        let get = |e: sqlx::Error| CatalogError::Invalid(format!("unreadable evaluation row: {e}"));
        let all = rows.iter().map(|r| {
            let metrics: String = r.try_get("metrics").map_err(get)?;
            Ok(Evaluation {
                id: r.try_get("id").map_err(get)?,
                run_id: r.try_get("run_id").map_err(get)?,
                model: r.try_get("model").map_err(get)?,
                adapter: r.try_get("adapter").map_err(get)?,
                task: r.try_get("task").map_err(get)?,
                dataset: r.try_get("dataset").map_err(get)?,
                dataset_sha256: r.try_get("dataset_sha256").map_err(get)?,
                items: r.try_get("items").map_err(get)?,
                metrics: serde_json::from_str(&metrics).map_err(|e| {
                    CatalogError::Invalid(format!("an evaluation's metrics are not JSON: {e}"))
                })?,
                created_at: r.try_get("created_at").map_err(get)?,
            })
        });
        all.filter(|e: &Result<Evaluation>| {
            runs.is_empty()
                || e.as_ref()
                    .map_or(true, |e| e.run_id.is_some_and(|r| runs.contains(&r)))
        })
        .collect()
    }
}
