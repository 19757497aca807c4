//! JSONL datasets: one JSON object a line, either `{"text": …}` (every token trained) or
//! `{"prompt": …, "completion": …}` (prompt tokens masked out of the loss).

use std::path::Path;

use super::batch::Example;
use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

/// One record of a dataset.
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
}

/// Parses the JSONL file at `path`; a malformed line is an error naming the line.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    let err = |line: usize, message: String| EngineError::Dataset {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(n, format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err(n, "expected a JSON object".into()))?;
        let field = |name: &str| -> Result<Option<String>> {
            match obj.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(n, format!("field `{name}` must be a string"))),
            }
        };
        let record = match (field("text")?, field("prompt")?, field("completion")?) {
            (Some(t), None, None) => Record::Text(t),
            (None, Some(prompt), Some(completion)) => {
                Record::PromptCompletion { prompt, completion }
            }
            (None, Some(_), None) => return Err(err(n, "has `prompt` but no `completion`".into())),
            (None, None, Some(_)) => return Err(err(n, "has `completion` but no `prompt`".into())),
            (Some(_), _, _) => {
                return Err(err(
                    n,
                    "has both `text` and `prompt`/`completion`; use one form".into(),
                ))
            }
            (None, None, None) => {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                return Err(err(
                    n,
                    format!(
                        "expected `text` or `prompt` + `completion`, found keys: {}",
                        keys.join(", ")
                    ),
                ));
            }
        };
        out.push(record);
    }
    if out.is_empty() {
        return Err(EngineError::bad_file(path, "the dataset is empty"));
    }
    Ok(out)
}

/// Tokenizes a record: BOS when the tokenizer wants one, then the text, then EOS.
pub fn tokenize(record: &Record, tok: &TextTokenizer) -> Result<Example> {
    let eos: Vec<u32> = tok.eos_ids().first().copied().into_iter().collect();
    let (mut ids, mut mask) = match record {
        Record::Text(t) => (tok.encode(t, true)?, Vec::new()),
        Record::PromptCompletion { prompt, completion } => {
            let mut ids = tok.encode(prompt, true)?;
            let mask = vec![0u8; ids.len()];
            ids.extend(tok.encode(completion, false)?);
            (ids, mask)
        }
    };
    ids.extend(&eos);
    mask.resize(ids.len(), 1u8);
    Ok(Example {
        ids,
        loss_mask: mask,
    })
}

/// Reads and tokenizes a JSONL dataset.
pub fn read_jsonl(path: &Path, tok: &TextTokenizer) -> Result<Vec<Example>> {
    read_records(path)?
        .iter()
        .map(|r| tokenize(r, tok))
        .collect()
}
