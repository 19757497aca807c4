//! The catalog's error type.

use std::path::PathBuf;

/// Errors raised by the catalog. Each names the database file or the run concerned.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite refused or failed a statement.
    #[error("catalog {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("catalog {path}: migrating the schema failed: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        source: sqlx::migrate::MigrateError,
    },
    /// The database file's folder or the async runtime could not be set up.
    #[error("catalog {path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// No run has this id.
    #[error("no run {0} in the catalog (`runs list` shows them)")]
    NoSuchRun(i64),
    /// A value that the catalog cannot hold or act on.
    #[error("{0}")]
    Invalid(String),
}

/// The catalog's result type.
pub type Result<T> = std::result::Result<T, CatalogError>;
