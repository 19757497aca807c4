//! The engine's error type: every failure names the file, line or field it comes from.

use std::path::PathBuf;

/// Errors raised by the engine. Messages are written for the person who supplied the input.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A tensor operation failed inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file exists but its content is not what was expected.
    #[error("{path}: {message}")]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A setting is out of range or inconsistent.
    #[error("invalid setting `{field}`: {message}")]
    Config {
        /// The setting concerned.
        field: String,
        /// Why it is rejected.
        message: String,
    },
    /// A dataset line or record is malformed.
    #[error("{path}:{line}: {message}")]
    Dataset {
        /// The dataset file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// The Hugging Face hub could not serve a download; the message says what to do.
    #[error("hub: {0}")]
    Hub(String),
    /// The requested compute device cannot be had; the message says why.
    #[error("device: {0}")]
    Device(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A job handed to another trainer (accelerate, ssh, Slurm) failed; the message says how
    /// and where its log is.
    #[error("{target} job: {message}")]
    Job {
        /// The target, as `[target]` names it.
        target: String,
        /// What happened.
        message: String,
    },
    /// Training was cancelled on request.
    #[error("cancelled")]
    Cancelled,
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, EngineError>;

/// An engine error inside a candle custom op's backward pass, which must return candle's
/// error: candle's own as it was, anything else as its message.
impl From<EngineError> for candle_core::Error {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

impl EngineError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed file.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Runs a third-party reader on the file `path`; a panic inside it (a malformed file it
    /// did not expect) becomes the error `message` naming the file, not a crash.
    pub fn contain_panic<T>(
        path: &std::path::Path,
        message: &str,
        read: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
            .unwrap_or_else(|_| Err(Self::bad_file(path, message)))
    }

    /// An invalid setting.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
