//! What a run leaves behind and what people add to it: checkpoints, adapters, tags, notes.

use serde::Serialize;
use sqlx::Row;

use crate::error::{CatalogError, Result};
use crate::{now, Catalog};

/// An adapter to record.
#[derive(Debug, Clone)]
pub struct NewAdapter {
    /// The run that trained it, if any.
    pub run_id: Option<i64>,
    /// Its folder or file.
    pub path: String,
    /// Method.
    pub method: String,
    /// Base model it belongs to.
    pub base_model: String,
    /// SHA-256 of its weights file.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// A recorded adapter.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterRecord {
    /// Catalog id.
    pub id: i64,
    /// The run that trained it.
    pub run_id: Option<i64>,
    /// Folder or file.
    pub path: String,
    /// Method.
    pub method: String,
    /// Base model.
    pub base_model: String,
    /// SHA-256 of its weights.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: i64,
}

impl Catalog {
    /// Records the checkpoints a run has on disk now (older rows not listed are dropped,
    /// as the trainer prunes old checkpoints).
    pub fn set_checkpoints(&self, run_id: i64, steps: &[(i64, String)]) -> Result<()> {
        let t = now();
        self.block(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM checkpoints WHERE run_id = ?")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            for (step, path) in steps {
                sqlx::query(
                    "INSERT INTO checkpoints (run_id, step, path, created_at) VALUES (?, ?, ?, ?)",
                )
                .bind(run_id)
                .bind(step)
                .bind(path)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
    }

    /// A run's checkpoints as (step, folder), oldest first.
    pub fn checkpoints(&self, run_id: i64) -> Result<Vec<(i64, String)>> {
        self.block(
            sqlx::query_as("SELECT step, path FROM checkpoints WHERE run_id = ? ORDER BY step")
                .bind(run_id)
                .fetch_all(&self.pool),
        )
    }

    /// Records an exported or trained adapter.
    pub fn add_adapter(&self, a: &NewAdapter) -> Result<i64> {
        self.block(
            sqlx::query_scalar(
                "INSERT INTO adapters (run_id, path, method, base_model, sha256, size_bytes,
                    created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(a.run_id)
            .bind(&a.path)
            .bind(&a.method)
            .bind(&a.base_model)
            .bind(&a.sha256)
            .bind(a.size_bytes as i64)
            .bind(now())
            .fetch_one(&self.pool),
        )
    }

    /// Forgets an adapter; returns its record (its files are the caller's to remove).
    pub fn delete_adapter(&self, id: i64) -> Result<AdapterRecord> {
        let record = self
            .adapters(None)?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| CatalogError::Invalid(format!("adapter {id} is not in the catalog")))?;
        self.block(
            sqlx::query("DELETE FROM adapters WHERE id = ?")
                .bind(id)
                .execute(&self.pool),
        )?;
        Ok(record)
    }

    /// Adapters of a run (all adapters with `None`), oldest first.
    pub fn adapters(&self, run_id: Option<i64>) -> Result<Vec<AdapterRecord>> {
        let rows = self.block(
            sqlx::query(
                "SELECT id, run_id, path, method, base_model, sha256, size_bytes FROM adapters
                 WHERE ? IS NULL OR run_id = ? ORDER BY id",
            )
            .bind(run_id)
            .bind(run_id)
            .fetch_all(&self.pool),
        )?;
        let get = |e: sqlx::Error| CatalogError::Invalid(format!("unreadable adapter row: {e}"));
        rows.iter()
            .map(|r| {
                Ok(AdapterRecord {
                    id: r.try_get("id").map_err(get)?,
                    run_id: r.try_get("run_id").map_err(get)?,
                    path: r.try_get("path").map_err(get)?,
                    method: r.try_get("method").map_err(get)?,
                    base_model: r.try_get("base_model").map_err(get)?,
                    sha256: r.try_get("sha256").map_err(get)?,
                    size_bytes: r.try_get("size_bytes").map_err(get)?,
                })
            })
            .collect()
    }

    /// Adds a tag to a run (no-op when present).
    pub fn tag(&self, run_id: i64, tag: &str) -> Result<()> {
        let tag = tag.trim();
        if tag.is_empty() || tag.contains('\u{1f}') {
            return Err(CatalogError::Invalid(format!(
                "`{tag}` is not a usable tag"
            )));
        }
        self.run(run_id)?;
        self.block(
            sqlx::query("INSERT OR IGNORE INTO tags (run_id, tag) VALUES (?, ?)")
                .bind(run_id)
                .bind(tag)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Removes a tag from a run.
    pub fn untag(&self, run_id: i64, tag: &str) -> Result<()> {
        self.block(
            sqlx::query("DELETE FROM tags WHERE run_id = ? AND tag = ?")
                .bind(run_id)
                .bind(tag.trim())
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Appends a note to a run.
    pub fn add_note(&self, run_id: i64, body: &str) -> Result<()> {
        self.run(run_id)?;
        self.block(
            sqlx::query("INSERT INTO notes (run_id, body, created_at) VALUES (?, ?, ?)")
                .bind(run_id)
                .bind(body)
                .bind(now())
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// A run's notes as (time, text), oldest first.
    pub fn notes(&self, run_id: i64) -> Result<Vec<(f64, String)>> {
        self.block(
            sqlx::query_as("SELECT created_at, body FROM notes WHERE run_id = ? ORDER BY id")
                .bind(run_id)
                .fetch_all(&self.pool),
        )
    }
}
