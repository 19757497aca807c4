//! Record formats: plain text, prompt/completion, alpaca, chat `messages` (OpenAI style) and
//! ShareGPT `conversations`, detected from the fields or chosen.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::read::kind;
use crate::chat::Message;
use crate::error::EngineError;

/// How records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Decide from the first record's fields.
    #[default]
    Auto,
    /// `{"text": …}`: every token trained.
    Text,
    /// `{"prompt": …, "completion": …}` (or `{"input": …, "target": …}`).
    PromptCompletion,
    /// `{"instruction": …, "input": …, "output": …}` (input optional, `system` optional).
    Alpaca,
    /// `{"messages": [{"role": …, "content": …}, …]}`.
    Messages,
    /// `{"conversations": [{"from": "human"|"gpt"|"system", "value": …}, …]}`.
    Sharegpt,
}

impl Format {
    /// Every format, `auto` first.
    pub const ALL: [Format; 6] = [
        Self::Auto,
        Self::Text,
        Self::PromptCompletion,
        Self::Alpaca,
        Self::Messages,
        Self::Sharegpt,
    ];
}

impl Format {
    /// Whether its records can hold a source and a target, which an encoder-decoder model
    /// (T5) trains on: every format but plain text (`auto` decides per record).
    pub fn holds_pairs(self) -> bool {
        self != Self::Text
    }
}

impl std::str::FromStr for Format {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        Ok(match s {
            "auto" => Self::Auto,
            "text" => Self::Text,
            "prompt-completion" => Self::PromptCompletion,
            "alpaca" => Self::Alpaca,
            "messages" => Self::Messages,
            "sharegpt" => Self::Sharegpt,
            other => {
                return Err(EngineError::config(
                    "format",
                    format!("`{other}` is not a format; use auto, text, prompt-completion, alpaca, messages or sharegpt"),
                ))
            }
        })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Text => "text",
            Self::PromptCompletion => "prompt-completion",
            Self::Alpaca => "alpaca",
            Self::Messages => "messages",
            Self::Sharegpt => "sharegpt",
        })
    }
}

/// One training record, format-independent.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Plain text, trained on every token.
    Text(String),
    /// A prompt (not trained on) and its completion (trained on).
    PromptCompletion {
        /// Context the model sees but is not scored on.
        prompt: String,
        /// What the model learns to produce.
        completion: String,
    },
    /// A conversation rendered with the chat template; assistant turns are trained.
    Chat(Vec<Message>),
}

/// The format the fields of one record suggest.
pub fn detect(fields: &Map<String, Value>) -> Option<Format> {
    let has = |k: &str| fields.contains_key(k);
    if has("messages") {
        Some(Format::Messages)
    } else if has("conversations") {
        Some(Format::Sharegpt)
    } else if has("instruction") || (has("output") && !has("completion")) {
        Some(Format::Alpaca)
    } else if has("prompt") || has("completion") || (has("input") && has("target")) {
        Some(Format::PromptCompletion)
    } else if has("text") {
        Some(Format::Text)
    } else {
        None
    }
}

/// A problem with one record: a short reason (for the summary) and the full message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Groups problems in the summary, e.g. `missing field`.
    pub reason: &'static str,
    /// The message shown after `FILE:LINE:`.
    pub message: String,
}

fn reject(reason: &'static str, message: String) -> Rejection {
    Rejection { reason, message }
}

fn string_field(
    fields: &Map<String, Value>,
    format: &str,
    name: &str,
    required: bool,
) -> Result<Option<String>, Rejection> {
    match fields.get(name) {
        None | Some(Value::Null) if required => Err(reject(
            "missing field",
            format!("{format} record has no \"{name}\""),
        )),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(reject(
            "wrong type",
            format!("field \"{name}\" is {}, expected a string", kind(other)),
        )),
    }
}

/// Converts one row into a record of `format` (not `Auto`).
pub fn to_record(fields: &Map<String, Value>, format: Format) -> Result<Record, Rejection> {
    let get =
        |name: &str, required: bool| string_field(fields, &format.to_string(), name, required);
    let need = |name: &str| get(name, true).map(Option::unwrap_or_default);
    match format {
        Format::Auto | Format::Text => Ok(Record::Text(need("text")?)),
        Format::PromptCompletion => {
            // `input`/`target`, the usual names of sequence-to-sequence data, read as the
            // prompt and its completion.
            let named = |main: &str, alt: &str| match fields.contains_key(main)
                || !fields.contains_key(alt)
            {
                true => need(main),
                false => need(alt),
            };
            Ok(Record::PromptCompletion {
                prompt: named("prompt", "input")?,
                completion: named("completion", "target")?,
            })
        }
        Format::Alpaca => {
            let instruction = need("instruction")?;
            let input = get("input", false)?.unwrap_or_default();
            let output = need("output")?;
            let mut messages = Vec::new();
            if let Some(system) = get("system", false)?.filter(|s| !s.is_empty()) {
                messages.push(Message {
                    role: "system".into(),
                    content: system,
                });
            }
            let user = if input.trim().is_empty() {
                instruction
            } else {
                format!("{instruction}\n\n{input}")
            };
            messages.push(Message {
                role: "user".into(),
                content: user,
            });
            messages.push(Message {
                role: "assistant".into(),
                content: output,
            });
            Ok(Record::Chat(messages))
        }
        Format::Messages => turns(fields, "messages", "role", "content", |r| {
            Some(r.to_string())
        }),
        Format::Sharegpt => turns(fields, "conversations", "from", "value", |r| match r {
            "human" | "user" => Some("user".into()),
            "gpt" | "assistant" | "bot" | "model" => Some("assistant".into()),
            "system" => Some("system".into()),
            _ => None,
        }),
    }
}

/// A list of turns under `list`, each with a role field and a text field.
fn turns(
    fields: &Map<String, Value>,
    list: &str,
    role_key: &str,
    text_key: &str,
    role_of: impl Fn(&str) -> Option<String>,
) -> Result<Record, Rejection> {
    let items = match fields.get(list) {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return Err(reject("missing field", format!("record has no \"{list}\"")))
        }
        Some(other) => {
            return Err(reject(
                "wrong type",
                format!(
                    "field \"{list}\" is {}, expected an array of turns",
                    kind(other)
                ),
            ))
        }
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{list}[{i}]");
        let obj = item.as_object().ok_or_else(|| {
            reject(
                "wrong type",
                format!("{at} is {}, expected an object", kind(item)),
            )
        })?;
        let role = match obj.get(role_key) {
            Some(Value::String(r)) => role_of(r).ok_or_else(|| {
                reject(
                    "unknown role",
                    format!("{at}.{role_key} is \"{r}\", not a known role"),
                )
            })?,
            _ => {
                return Err(reject(
                    "missing field",
                    format!("{at} has no string \"{role_key}\""),
                ))
            }
        };
        let content = match obj.get(text_key) {
            Some(Value::String(c)) => c.clone(),
            _ => {
                return Err(reject(
                    "missing field",
                    format!("{at} has no string \"{text_key}\""),
                ))
            }
        };
        messages.push(Message { role, content });
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(reject(
            "nothing to train",
            format!("\"{list}\" has no assistant turn to train on"),
        ));
    }
    Ok(Record::Chat(messages))
}
