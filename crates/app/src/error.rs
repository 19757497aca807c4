//! The app layer's error type: engine and catalog errors, plus what this layer adds.

use std::path::PathBuf;

/// Errors of the use cases.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The engine failed (model, data, training, export).
    #[error(transparent)]
    Engine(#[from] peft_studio_engine::EngineError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] peft_studio_catalog::CatalogError),
    /// A file or process could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or program concerned.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A chart could not be drawn or written.
    #[error("chart {path}: {message}")]
    Chart {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
}

impl AppError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<candle_core::Error> for AppError {
    fn from(e: candle_core::Error) -> Self {
        Self::Engine(e.into())
    }
}

/// The app layer's result type.
pub type Result<T> = std::result::Result<T, AppError>;
