//! Runs: their config, status and life cycle (queued → running → completed | failed |
//! cancelled; a resume puts a stopped run back in the queue).

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::error::{CatalogError, Result};
use crate::{now, Catalog};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for its device.
    Queued,
    /// A worker is training it.
    Running,
    /// Trained to the last step; its adapter is written.
    Completed,
    /// Stopped by an error or a dead worker; resumable from its last checkpoint.
    Failed,
    /// Stopped on request after a checkpoint; resumable.
    Cancelled,
}

impl RunStatus {
    /// The word stored in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(CatalogError::Invalid(format!(
                    "unknown run status `{other}`"
                )))
            }
        })
    }

    /// Whether a worker is (or should be) behind the run.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

/// What a new run is made of.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// A short human name.
    pub name: String,
    /// Base model name (library name or folder name).
    pub model_name: String,
    /// Base model folder.
    pub model_path: String,
    /// Its architecture, when known.
    pub architecture: Option<String>,
    /// Training data file.
    pub dataset_path: String,
    /// SHA-256 of the training data.
    pub dataset_sha256: String,
    /// Size of the training data in bytes.
    pub dataset_bytes: u64,
    /// `lora`, `freeze`, …
    pub method: String,
    /// The full run config as JSON.
    pub config: serde_json::Value,
    /// The run folder (checkpoints, adapter, events).
    pub out_dir: String,
    /// `cpu`, `cuda:0`, `metal`.
    pub device: String,
}

/// A run as the catalog knows it.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Catalog id.
    pub id: i64,
    /// Human name.
    pub name: String,
    /// Base model name.
    pub model_name: Option<String>,
    /// Base model folder.
    pub model_path: Option<String>,
    /// Training data file.
    pub dataset_path: Option<String>,
    /// SHA-256 of the training data.
    pub dataset_sha256: Option<String>,
    /// Method.
    pub method: String,
    /// Full config (JSON).
    pub config: serde_json::Value,
    /// Run folder.
    pub out_dir: String,
    /// Status.
    pub status: RunStatus,
    /// Device.
    pub device: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The worker's process id while live.
    pub pid: Option<i64>,
    /// Last sign of life from the worker (Unix seconds).
    pub heartbeat_at: Option<f64>,
    /// Whether someone asked it to stop.
    pub cancel_requested: bool,
    /// Steps the run will take.
    pub total_steps: Option<i64>,
    /// Highest resident memory of the worker, in bytes.
    pub peak_memory_bytes: Option<i64>,
    /// Created (Unix seconds).
    pub created_at: f64,
    /// Put in the queue (Unix seconds).
    pub queued_at: f64,
    /// Started training (Unix seconds).
    pub started_at: Option<f64>,
    /// Ended (Unix seconds).
    pub finished_at: Option<f64>,
    /// Last step with metrics.
    pub last_step: Option<i64>,
    /// Its training loss.
    pub last_loss: Option<f64>,
    /// Lowest validation loss.
    pub best_eval_loss: Option<f64>,
    /// Tags, sorted.
    pub tags: Vec<String>,
}

/// Which runs `runs` lists.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only these statuses (all when empty).
    pub statuses: Vec<RunStatus>,
    /// Only runs with this tag.
    pub tag: Option<String>,
}

const RUN_COLUMNS: &str = "r.id, r.name, m.name AS model_name, m.path AS model_path,
    d.path AS dataset_path, d.sha256 AS dataset_sha256, r.method, r.config, r.out_dir, r.status,
    r.device, r.error, r.pid, r.heartbeat_at, r.cancel_requested, r.total_steps,
    r.peak_memory_bytes, r.created_at, r.queued_at, r.started_at, r.finished_at,
    (SELECT step FROM metrics WHERE run_id = r.id AND loss IS NOT NULL
        ORDER BY step DESC LIMIT 1) AS last_step,
    (SELECT loss FROM metrics WHERE run_id = r.id AND loss IS NOT NULL
        ORDER BY step DESC LIMIT 1) AS last_loss,
    (SELECT min(eval_loss) FROM metrics WHERE run_id = r.id) AS best_eval_loss,
    (SELECT group_concat(tag, char(31)) FROM (SELECT tag FROM tags WHERE run_id = r.id
        ORDER BY tag)) AS tags
    FROM runs r LEFT JOIN models m ON m.id = r.model_id LEFT JOIN datasets d ON d.id = r.dataset_id";

fn run_from_row(row: &SqliteRow) -> Result<Run> {
    let get = |e: sqlx::Error| CatalogError::Invalid(format!("unreadable run row: {e}"));
    let config: String = row.try_get("config").map_err(get)?;
    let status: String = row.try_get("status").map_err(get)?;
    let tags: Option<String> = row.try_get("tags").map_err(get)?;
    Ok(Run {
        id: row.try_get("id").map_err(get)?,
        name: row.try_get("name").map_err(get)?,
        model_name: row.try_get("model_name").map_err(get)?,
        model_path: row.try_get("model_path").map_err(get)?,
        dataset_path: row.try_get("dataset_path").map_err(get)?,
        dataset_sha256: row.try_get("dataset_sha256").map_err(get)?,
        method: row.try_get("method").map_err(get)?,
        config: serde_json::from_str(&config)
            .map_err(|e| CatalogError::Invalid(format!("run config is not JSON: {e}")))?,
        out_dir: row.try_get("out_dir").map_err(get)?,
        status: RunStatus::parse(&status)?,
        device: row.try_get("device").map_err(get)?,
        error: row.try_get("error").map_err(get)?,
        pid: row.try_get("pid").map_err(get)?,
        heartbeat_at: row.try_get("heartbeat_at").map_err(get)?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested").map_err(get)? != 0,
        total_steps: row.try_get("total_steps").map_err(get)?,
        peak_memory_bytes: row.try_get("peak_memory_bytes").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        queued_at: row.try_get("queued_at").map_err(get)?,
        started_at: row.try_get("started_at").map_err(get)?,
        finished_at: row.try_get("finished_at").map_err(get)?,
        last_step: row.try_get("last_step").map_err(get)?,
        last_loss: row.try_get("last_loss").map_err(get)?,
        best_eval_loss: row.try_get("best_eval_loss").map_err(get)?,
        tags: tags
            .map(|t| t.split('\u{1f}').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

impl Catalog {
    /// Records a new run, queued.
    pub fn add_run(&self, new: &NewRun) -> Result<i64> {
        let t = now();
        let config = new.config.to_string();
        self.block(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO models (name, path, architecture, added_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (path) DO UPDATE SET name = excluded.name,
                    architecture = coalesce(excluded.architecture, architecture)",
            )
            .bind(&new.model_name)
            .bind(&new.model_path)
            .bind(&new.architecture)
            .bind(t)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO datasets (path, sha256, bytes, added_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (path, sha256) DO NOTHING",
            )
            .bind(&new.dataset_path)
            .bind(&new.dataset_sha256)
            .bind(new.dataset_bytes as i64)
            .bind(t)
            .execute(&mut *tx)
            .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO runs (name, model_id, dataset_id, method, config, out_dir, status,
                    device, created_at, queued_at)
                 VALUES (?, (SELECT id FROM models WHERE path = ?),
                    (SELECT id FROM datasets WHERE path = ? AND sha256 = ?),
                    ?, ?, ?, 'queued', ?, ?, ?)
                 RETURNING id",
            )
            .bind(&new.name)
            .bind(&new.model_path)
            .bind(&new.dataset_path)
            .bind(&new.dataset_sha256)
            .bind(&new.method)
            .bind(&config)
            .bind(&new.out_dir)
            .bind(&new.device)
            .bind(t)
            .bind(t)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// One run.
    pub fn run(&self, id: i64) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLUMNS} WHERE r.id = ?");
        let row = self.block(sqlx::query(&sql).bind(id).fetch_optional(&self.pool))?;
        run_from_row(&row.ok_or(CatalogError::NoSuchRun(id))?)
    }

    /// Runs matching `filter`, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS}
             WHERE (? IS NULL OR EXISTS (SELECT 1 FROM tags WHERE run_id = r.id AND tag = ?))
             ORDER BY r.id DESC"
        );
        let rows = self.block(
            sqlx::query(&sql)
                .bind(&filter.tag)
                .bind(&filter.tag)
                .fetch_all(&self.pool),
        )?;
        rows.iter()
            .map(run_from_row)
            .filter(|r| match r {
                Ok(run) => filter.statuses.is_empty() || filter.statuses.contains(&run.status),
                Err(_) => true,
            })
            .collect()
    }

    /// Takes the run's turn on its device if it is the oldest queued run there and nothing
    /// runs on it; returns whether the run is now `running` under `pid`.
    pub fn claim(&self, id: i64, pid: u32) -> Result<bool> {
        let t = now();
        let done = self.block(
            sqlx::query(
                "UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ?,
                    started_at = coalesce(started_at, ?), error = NULL
                 WHERE id = ? AND status = 'queued'
                   AND NOT EXISTS (SELECT 1 FROM runs o
                        WHERE o.device = runs.device AND o.id <> runs.id AND (o.status = 'running'
                           OR (o.status = 'queued' AND (o.queued_at, o.id) < (runs.queued_at, runs.id))))",
            )
            .bind(pid as i64)
            .bind(t)
            .bind(t)
            .bind(id)
            .execute(&self.pool),
        )?;
        Ok(done.rows_affected() == 1)
    }

    /// Notes which process will train a queued run (so that a dead one is noticed).
    pub fn set_pid(&self, id: i64, pid: u32) -> Result<()> {
        self.block(
            sqlx::query("UPDATE runs SET pid = ?, heartbeat_at = ? WHERE id = ?")
                .bind(pid as i64)
                .bind(now())
                .bind(id)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// The worker's sign of life; returns whether it should stop: a stop was requested, or
    /// the run is no longer live (another program presumed the worker dead).
    pub fn heartbeat(&self, id: i64, peak_memory_bytes: Option<u64>) -> Result<bool> {
        let cancel: Option<i64> = self.block(
            sqlx::query_scalar(
                "UPDATE runs SET heartbeat_at = ?,
                    peak_memory_bytes = max(coalesce(peak_memory_bytes, 0), coalesce(?, 0))
                 WHERE id = ? AND status IN ('queued', 'running') RETURNING cancel_requested",
            )
            .bind(now())
            .bind(peak_memory_bytes.map(|b| b as i64))
            .bind(id)
            .fetch_optional(&self.pool),
        )?;
        Ok(cancel.is_none_or(|c| c != 0))
    }

    /// Records how many steps the run takes.
    pub fn set_total_steps(&self, id: i64, total: u64) -> Result<()> {
        self.block(
            sqlx::query("UPDATE runs SET total_steps = ? WHERE id = ?")
                .bind(total as i64)
                .bind(id)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Ends a run with `status` (and the reason, for failures), if it is still live.
    /// Returns whether it was.
    pub fn finish(&self, id: i64, status: RunStatus, error: Option<&str>) -> Result<bool> {
        let done = self.block(
            sqlx::query(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, pid = NULL
                 WHERE id = ? AND status IN ('queued', 'running')",
            )
            .bind(status.as_str())
            .bind(error)
            .bind(now())
            .bind(id)
            .execute(&self.pool),
        )?;
        Ok(done.rows_affected() == 1)
    }

    /// Asks a live run to stop after its current step (it checkpoints, then ends
    /// `cancelled`). A queued run is cancelled at once. Returns the run's status after.
    pub fn request_cancel(&self, id: i64) -> Result<RunStatus> {
        let run = self.run(id)?;
        match run.status {
            RunStatus::Queued => {
                self.finish(id, RunStatus::Cancelled, None)?;
            }
            RunStatus::Running => {
                self.block(
                    sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = ?")
                        .bind(id)
                        .execute(&self.pool),
                )?;
            }
            _ => {}
        }
        Ok(self.run(id)?.status)
    }

    /// Puts a stopped run back in the queue to continue from its last checkpoint.
    pub fn requeue(&self, id: i64) -> Result<()> {
        let run = self.run(id)?;
        if run.status.is_live() {
            return Err(CatalogError::Invalid(format!(
                "run {id} is {}; only a stopped run can be resumed",
                run.status.as_str()
            )));
        }
        self.block(
            sqlx::query(
                "UPDATE runs SET status = 'queued', error = NULL, cancel_requested = 0,
                    queued_at = ?, finished_at = NULL, pid = NULL WHERE id = ?",
            )
            .bind(now())
            .bind(id)
            .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Replaces a stopped run's config (resuming with more steps).
    pub fn set_config(&self, id: i64, config: &serde_json::Value) -> Result<()> {
        let run = self.run(id)?;
        if run.status.is_live() {
            return Err(CatalogError::Invalid(format!(
                "run {id} is {}; its config can change only while it is stopped",
                run.status.as_str()
            )));
        }
        self.block(
            sqlx::query("UPDATE runs SET config = ? WHERE id = ?")
                .bind(config.to_string())
                .bind(id)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Deletes a stopped run and everything recorded about it (not its files).
    pub fn delete_run(&self, id: i64) -> Result<Run> {
        let run = self.run(id)?;
        if run.status.is_live() {
            return Err(CatalogError::Invalid(format!(
                "run {id} is {}; cancel it before deleting it",
                run.status.as_str()
            )));
        }
        self.block(
            sqlx::query("DELETE FROM runs WHERE id = ?")
                .bind(id)
                .execute(&self.pool),
        )?;
        Ok(run)
    }
}
