//! What a failed command sends the window: the message, and what to do about it.

use serde::Serialize;

/// A command's error as the UI shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandError {
    /// What went wrong, naming the file, line or field.
    pub message: String,
    /// What the user can do about it, when there is something.
    pub hint: Option<String>,
}

impl CommandError {
    /// An error with a hint.
    pub fn with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl From<peft_studio_app::AppError> for CommandError {
    fn from(e: peft_studio_app::AppError) -> Self {
        use peft_studio_app::AppError;
        let hint = match &e {
            AppError::Engine(peft_studio_app::EngineError::Config { .. }) => {
                Some("change the field named and try again")
            }
            AppError::Catalog(_) => Some("the run catalog could not be used; is the disk full?"),
            _ => None,
        };
        Self {
            message: e.to_string(),
            hint: hint.map(str::to_string),
        }
    }
}

impl From<peft_studio_app::EngineError> for CommandError {
    fn from(e: peft_studio_app::EngineError) -> Self {
        peft_studio_app::AppError::from(e).into()
    }
}

impl From<peft_studio_app::catalog::CatalogError> for CommandError {
    fn from(e: peft_studio_app::catalog::CatalogError) -> Self {
        peft_studio_app::AppError::from(e).into()
    }
}

/// A command's result.
pub type CommandResult<T> = Result<T, CommandError>;

/// Runs blocking work (the catalog, the engine) off the async runtime's threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> CommandResult<T> + Send + 'static,
) -> CommandResult<T> {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .map_err(|e| CommandError {
            message: format!("the studio's worker thread failed: {e}"),
            hint: None,
        })?
}
