//! The OpenAI API's requests, answers and errors as this server speaks them (the chat and
//! completions endpoints, model listing): what the official clients send and read.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// An error as OpenAI's clients read it: `{"error": {message, type, param, code}}` with its
/// HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// `param`: the request field at fault.
    pub param: Option<&'static str>,
    /// `code`: a machine-readable word.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about field `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    /// An error with its own status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: Some(code),
        }
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "invalid_request_error",
            429 | 503 => "server_overloaded",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The error object.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to four.
    Many(Vec<String>),
}

/// A message's content: text, or parts of which the text ones are read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": ...}, ...]`.
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
pub struct Part {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (`developer` is read as `system`).
    pub role: String,
    /// Its content (absent: empty).
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share.
#[derive(Debug, Deserialize)]
pub struct Sampling {
    /// 0–2; 0 is greedy. Default 1, as OpenAI's.
    pub temperature: Option<f64>,
    /// (0, 1].
    pub top_p: Option<f64>,
    /// New tokens at most (signed, so that a negative one is refused by name).
    pub max_tokens: Option<i64>,
    /// The chat endpoint's newer name for it.
    pub max_completion_tokens: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// The sampler's seed.
    pub seed: Option<i64>,
    /// Choices per request: only 1.
    pub n: Option<i64>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The base model's name or an adapter's.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt`: one string or a list of one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// The prompt.
    One(String),
    /// A list (one prompt only).
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The base model's name or an adapter's.
    pub model: String,
    /// The text to continue.
    pub prompt: Prompt,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /v1/adapters`: load an adapter folder under a name.
#[derive(Debug, Deserialize)]
pub struct LoadAdapter {
    /// The name requests use in `model`.
    pub name: String,
    /// A PEFT adapter folder on the server's machine.
    pub path: String,
}

/// `usage`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Usage {
    /// Tokens of the prompt (after the chat template).
    pub prompt_tokens: usize,
    /// New tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// The counts of one answer.
    pub fn of(prompt: usize, completion: usize) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// Why an answer ended: `stop` (end of sequence or a stop string) or `length`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended it, or a stop string did.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

/// `GET /v1/models`' entries.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The name to put in `model`.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds it was loaded.
    pub created: u64,
    /// `peft-studio`.
    pub owned_by: &'static str,
    /// The base model of an adapter (none for the base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Where it was loaded from.
    pub root: String,
}
