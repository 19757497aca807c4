//! Evaluations (`eval`): a base model or an adapter measured on a dataset file, kept against
//! its run (when it has one) so that runs compare on them.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::error::{CatalogError, Result};
use crate::{now, Catalog};

/// An evaluation to record.
#[derive(Debug, Clone, Serialize)]
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

/// A recorded evaluation: what was recorded, with its id and time.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Catalog id.
    pub id: i64,
    /// What was measured and the figures.
    #[serde(flatten)]
    pub fields: NewEvaluation,
    /// Unix seconds.
    pub created_at: f64,
}

impl Catalog {
    /// Records an evaluation; returns it as recorded.
    pub fn add_evaluation(&self, e: &NewEvaluation) -> Result<Evaluation> {
        let metrics = serde_json::to_string(&e.metrics)
            .map_err(|err| CatalogError::Invalid(format!("metrics: {err}")))?;
        let created_at = now();
        let id = self.block(
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
            .bind(created_at)
            .fetch_one(&self.pool),
        )?;
        Ok(Evaluation {
            id,
            fields: e.clone(),
            created_at,
        })
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
            let items: i64 = r.try_get("items").map_err(get)?;
            Ok(Evaluation {
                id: r.try_get("id").map_err(get)?,
                fields: NewEvaluation {
                    run_id: r.try_get("run_id").map_err(get)?,
                    model: r.try_get("model").map_err(get)?,
                    adapter: r.try_get("adapter").map_err(get)?,
                    task: r.try_get("task").map_err(get)?,
                    dataset: r.try_get("dataset").map_err(get)?,
                    dataset_sha256: r.try_get("dataset_sha256").map_err(get)?,
                    items: usize::try_from(items).unwrap_or(0),
                    metrics: serde_json::from_str(&metrics).map_err(|e| {
                        CatalogError::Invalid(format!("an evaluation's metrics are not JSON: {e}"))
                    })?,
                },
                created_at: r.try_get("created_at").map_err(get)?,
            })
        });
        all.filter(|e: &Result<Evaluation>| {
            runs.is_empty()
                || e.as_ref()
                    .map_or(true, |e| e.fields.run_id.is_some_and(|r| runs.contains(&r)))
        })
        .collect()
    }
}
