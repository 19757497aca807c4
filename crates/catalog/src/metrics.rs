//! Per-step metrics, and the rollups that let a comparison of long runs stay fast.

use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use crate::error::{CatalogError, Result};
use crate::Catalog;

/// Bucket sizes, in steps, that training loss is summarised over (besides the raw rows).
pub(crate) const ROLLUP_LEVELS: [i64; 4] = [8, 64, 512, 4096];

/// One step's figures. A field left `None` keeps what is stored (an evaluation row after its
/// step's training row fills only `eval_loss`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// Optimiser step (0: before training).
    pub step: i64,
    /// Epoch.
    pub epoch: Option<i64>,
    /// Input tokens seen.
    pub tokens_seen: Option<i64>,
    /// Seconds of training so far, across resumptions.
    pub wall_s: Option<f64>,
    /// Training loss.
    pub loss: Option<f64>,
    /// Validation loss.
    pub eval_loss: Option<f64>,
    /// Learning rate.
    pub lr: Option<f64>,
    /// Gradient norm before clipping.
    pub grad_norm: Option<f64>,
    /// Throughput.
    pub tokens_per_s: Option<f64>,
}

fn metric_from_row(row: &SqliteRow) -> Result<MetricRow> {
    let get = |e: sqlx::Error| CatalogError::Invalid(format!("unreadable metrics row: {e}"));
    Ok(MetricRow {
        step: row.try_get("step").map_err(get)?,
        epoch: row.try_get("epoch").map_err(get)?,
        tokens_seen: row.try_get("tokens_seen").map_err(get)?,
        wall_s: row.try_get("wall_s").map_err(get)?,
        loss: row.try_get("loss").map_err(get)?,
        eval_loss: row.try_get("eval_loss").map_err(get)?,
        lr: row.try_get("lr").map_err(get)?,
        grad_norm: row.try_get("grad_norm").map_err(get)?,
        tokens_per_s: row.try_get("tokens_per_s").map_err(get)?,
    })
}

/// A bulk-read cell as an integer column's value (`None` for NULL).
fn int(v: f64) -> Option<i64> {
    (!v.is_nan()).then_some(v as i64)
}

/// A bulk-read cell as a real column's value (`None` for NULL).
fn real(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

/// A step's (step, epoch, tokens seen, wall time, value).
pub(crate) type RawPoint = (i64, Option<i64>, Option<i64>, Option<f64>, f64);

/// A bucket of training loss.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rollup {
    pub n: i64,
    pub step_max: i64,
    pub epoch_max: Option<i64>,
    pub tokens_max: Option<i64>,
    pub wall_max: Option<f64>,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Recomputes the rollup buckets that cover steps `from..=to` of a run.
async fn refresh_rollups(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: i64,
    from: i64,
    to: i64,
) -> sqlx::Result<()> {
    for level in ROLLUP_LEVELS {
        let (lo, hi) = (from / level * level, (to / level + 1) * level);
        sqlx::query("DELETE FROM metric_rollups WHERE run_id = ? AND level = ? AND bucket >= ? AND bucket < ?")
            .bind(run_id)
            .bind(level)
            .bind(lo / level)
            .bind(hi / level)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO metric_rollups (run_id, level, bucket, n, step_max, epoch_max, tokens_max,
                wall_max, loss_sum, loss_min, loss_max)
             SELECT run_id, ?1, step / ?1, count(*), max(step), max(epoch), max(tokens_seen),
                max(wall_s), sum(loss), min(loss), max(loss)
             FROM metrics WHERE run_id = ?2 AND step >= ?3 AND step < ?4 AND loss IS NOT NULL
             GROUP BY step / ?1",
        )
        .bind(level)
        .bind(run_id)
        .bind(lo)
        .bind(hi)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Catalog {
    /// Stores a batch of metrics in one transaction (a step written twice keeps the fields
    /// the later row sets).
    pub fn write_metrics(&self, run_id: i64, rows: &[MetricRow]) -> Result<()> {
        let (Some(from), Some(to)) = (
            rows.iter().map(|r| r.step).min(),
            rows.iter().map(|r| r.step).max(),
        ) else {
            return Ok(());
        };
        self.block(async {
            let mut tx = self.pool.begin().await?;
            for r in rows {
                sqlx::query(
                    "INSERT INTO metrics (run_id, step, epoch, tokens_seen, wall_s, loss,
                        eval_loss, lr, grad_norm, tokens_per_s)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (run_id, step) DO UPDATE SET
                        epoch = coalesce(excluded.epoch, epoch),
                        tokens_seen = coalesce(excluded.tokens_seen, tokens_seen),
                        wall_s = coalesce(excluded.wall_s, wall_s),
                        loss = coalesce(excluded.loss, loss),
                        eval_loss = coalesce(excluded.eval_loss, eval_loss),
                        lr = coalesce(excluded.lr, lr),
                        grad_norm = coalesce(excluded.grad_norm, grad_norm),
                        tokens_per_s = coalesce(excluded.tokens_per_s, tokens_per_s)",
                )
                .bind(run_id)
                .bind(r.step)
                .bind(r.epoch)
                .bind(r.tokens_seen)
                .bind(r.wall_s)
                .bind(r.loss)
                .bind(r.eval_loss)
                .bind(r.lr)
                .bind(r.grad_norm)
                .bind(r.tokens_per_s)
                .execute(&mut *tx)
                .await?;
            }
            refresh_rollups(&mut tx, run_id, from, to).await?;
            tx.commit().await
        })
    }

    /// Forgets metrics after `step` (a resumed run repeats the steps after its checkpoint).
    pub fn truncate_metrics_after(&self, run_id: i64, step: i64) -> Result<()> {
        self.block(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM metrics WHERE run_id = ? AND step > ?")
                .bind(run_id)
                .bind(step)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM metric_rollups WHERE run_id = ? AND (bucket + 1) * level > ?")
                .bind(run_id)
                .bind(step + 1)
                .execute(&mut *tx)
                .await?;
            refresh_rollups(&mut tx, run_id, step, step).await?;
            tx.commit().await
        })
    }

    /// A run's metrics after `after_step` (all with `-1`), in step order.
    pub fn metrics(&self, run_id: i64, after_step: i64) -> Result<Vec<MetricRow>> {
        let rows = self.block(
            sqlx::query("SELECT * FROM metrics WHERE run_id = ? AND step > ? ORDER BY step")
                .bind(run_id)
                .bind(after_step)
                .fetch_all(&self.pool),
        )?;
        rows.iter().map(metric_from_row).collect()
    }

    /// A run's validation losses, in step order.
    pub fn evals(&self, run_id: i64) -> Result<Vec<MetricRow>> {
        let rows = self.block(
            sqlx::query(
                // The planner otherwise walks every step of the run for a few hundred rows.
                "SELECT * FROM metrics INDEXED BY metrics_evals
                 WHERE run_id = ? AND eval_loss IS NOT NULL ORDER BY step",
            )
            .bind(run_id)
            .fetch_all(&self.pool),
        )?;
        rows.iter().map(metric_from_row).collect()
    }

    /// The last step with a training loss (0 when none).
    pub fn last_step(&self, run_id: i64) -> Result<i64> {
        let step: Option<i64> = self.block(
            // Walks the primary key backwards; max() with a filter would scan the whole run.
            sqlx::query_scalar(
                "SELECT step FROM metrics WHERE run_id = ? AND loss IS NOT NULL
                 ORDER BY step DESC LIMIT 1",
            )
            .bind(run_id)
            .fetch_optional(&self.pool),
        )?;
        Ok(step.unwrap_or(0))
    }

    /// Runs a bulk numeric read on a pooled connection.
    fn numeric(&self, sql: &str, params: &[i64], ncols: usize) -> Result<Vec<f64>> {
        self.block(async {
            let mut conn = self.pool.acquire().await?;
            crate::bulk::numeric_rows(&mut conn, sql, params, ncols).await
        })
    }

    /// Training-loss buckets of `level` steps, in step order.
    pub(crate) fn rollups(&self, run_id: i64, level: i64) -> Result<Vec<Rollup>> {
        let cells = self.numeric(
            "SELECT n, step_max, epoch_max, tokens_max, wall_max, loss_sum, loss_min, loss_max
             FROM metric_rollups WHERE run_id = ? AND level = ? ORDER BY bucket",
            &[run_id, level],
            8,
        )?;
        Ok(cells
            .chunks_exact(8)
            .map(|c| Rollup {
                n: c[0] as i64,
                step_max: c[1] as i64,
                epoch_max: int(c[2]),
                tokens_max: int(c[3]),
                wall_max: real(c[4]),
                mean: c[5] / c[0].max(1.0),
                min: c[6],
                max: c[7],
            })
            .collect())
    }

    /// Every training loss (`eval` false) or validation loss (`eval` true) of a run with its
    /// step, epoch, tokens and wall time, in step order.
    pub(crate) fn points(&self, run_id: i64, eval: bool) -> Result<Vec<RawPoint>> {
        let sql = if eval {
            // Forced: the planner would otherwise walk every step of the run.
            "SELECT step, epoch, tokens_seen, wall_s, eval_loss FROM metrics
             INDEXED BY metrics_evals WHERE run_id = ? AND eval_loss IS NOT NULL ORDER BY step"
        } else {
            "SELECT step, epoch, tokens_seen, wall_s, loss FROM metrics
             WHERE run_id = ? AND loss IS NOT NULL ORDER BY step"
        };
        let cells = self.numeric(sql, &[run_id], 5)?;
        Ok(cells
            .chunks_exact(5)
            .map(|c| (c[0] as i64, int(c[1]), int(c[2]), real(c[3]), c[4]))
            .collect())
    }
}
