//! Chat templates: the Jinja template from tokenizer_config.json rendered with minijinja.

use serde::Serialize;

use crate::error::{EngineError, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// Renders `messages` with the model's chat template.
pub fn render(template: &str, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| EngineError::config("chat_template", e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| EngineError::config("chat_template", e.to_string()))?;
    tmpl.render(minijinja::context! { messages => messages, add_generation_prompt => add_generation_prompt })
        .map_err(|e| EngineError::config("chat_template", e.to_string()))
}
