//! Opening the database: WAL, foreign keys, a busy timeout, and the migrations embedded in
//! the binary (so an installed studio needs no files beside it).

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::error::{CatalogError, Result};

/// Every schema version in order; a new schema is a new file here, never an edit.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "evaluations",
        include_str!("../migrations/0002_evaluations.sql"),
    ),
];

/// How long a statement waits for another process's write lock before failing. Writers hold
/// it for milliseconds (a batch of metrics), so this is only reached by a stuck process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<Vec<Migration>, BoxDynError>> + Send + 's>>
    {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The schema version this build writes.
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Opens (creating if needed) the database at `path` and migrates it to the newest schema.
pub(crate) async fn connect(path: &Path) -> Result<SqlitePool> {
    let db_err = |source| CatalogError::Db {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(db_err)?;
    let migrator = Migrator::new(Embedded)
        .await
        .map_err(|source| CatalogError::Migrate {
            path: path.to_path_buf(),
            source,
        })?;
    migrator
        .run(&pool)
        .await
        .map_err(|source| CatalogError::Migrate {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(pool)
}
