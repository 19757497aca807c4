//! Dataset files to rows of named fields: JSONL, JSON arrays, CSV/TSV and plain text.
//! Every row keeps the line it started on, so every later problem can name it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{EngineError, Result};

/// One record as read, before its format is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line (JSONL, CSV, text) or element index (JSON arrays) where it starts.
    pub line: usize,
    /// Its fields.
    pub fields: Map<String, Value>,
}

/// A row that could not be read at all (bad JSON, broken CSV quoting, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// Where it is.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// What a file gave: the rows, and the lines that could not be read.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// Readable rows.
    pub rows: Vec<Row>,
    /// Unreadable lines.
    pub unreadable: Vec<Unreadable>,
}

/// Reads `path` by its extension: `.jsonl`, `.json` (an array, or JSON lines), `.csv`, `.tsv`,
/// `.txt`/`.md` (one record per blank-line-separated block, in field `text`), `.parquet`
/// (rows numbered from 1).
/// `columns` renames fields (`from` → `to`), e.g. `question` → `prompt`.
pub fn read_rows(path: &Path, columns: &BTreeMap<String, String>) -> Result<ReadOutcome> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut out = if ext == "parquet" {
        parquet_rows(path)?
    } else {
        let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        match ext.as_str() {
            "csv" => delimited(bytes, b','),
            "tsv" => delimited(bytes, b'\t'),
            "txt" | "md" | "text" => text_blocks(path, bytes)?,
            "json" if first_non_space(bytes) == Some(b'[') => json_array(path, bytes)?,
            _ => json_lines(bytes),
        }
    };
    if !columns.is_empty() {
        for row in &mut out.rows {
            for (from, to) in columns {
                if let Some(v) = row.fields.remove(from) {
                    row.fields.insert(to.clone(), v);
                }
            }
        }
    }
    if out.rows.is_empty() && out.unreadable.is_empty() {
        return Err(EngineError::bad_file(path, "the dataset is empty"));
    }
    Ok(out)
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// One JSON object a line; blank lines are skipped, CRLF accepted.
fn json_lines(bytes: &[u8]) -> ReadOutcome {
    let mut out = ReadOutcome::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                out.unreadable.push(Unreadable {
                    line,
                    message: format!("not valid UTF-8 (byte {})", e.valid_up_to() + 1),
                });
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(fields)) => out.rows.push(Row { line, fields }),
            Ok(other) => out.unreadable.push(Unreadable {
                line,
                message: format!("expected a JSON object, found {}", kind(&other)),
            }),
            Err(e) => out.unreadable.push(Unreadable {
                line,
                message: format!("not valid JSON: {e}"),
            }),
        }
    }
    out
}

/// The name of a JSON value's type, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The whole file as UTF-8 text, or an error naming the first bad byte.
fn utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        EngineError::bad_file(
            path,
            format!("not valid UTF-8 at byte {}", e.valid_up_to() + 1),
        )
    })
}

/// A JSON array of objects; rows are numbered by element (1-based).
fn json_array(path: &Path, bytes: &[u8]) -> Result<ReadOutcome> {
    let text = utf8(path, bytes)?;
    let items: Vec<Value> = serde_json::from_str(text).map_err(|e| EngineError::Dataset {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("not a valid JSON array: {e}"),
    })?;
    let mut out = ReadOutcome::default();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::Object(fields) => out.rows.push(Row {
                line: i + 1,
                fields,
            }),
            other => out.unreadable.push(Unreadable {
                line: i + 1,
                message: format!("element {} is {}, expected an object", i + 1, kind(&other)),
            }),
        }
    }
    Ok(out)
}

/// CSV or TSV with a header row; every value is a string. Lines are the record's first line.
fn delimited(bytes: &[u8], delimiter: u8) -> ReadOutcome {
    let mut out = ReadOutcome::default();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(bytes);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            out.unreadable.push(Unreadable {
                line: 1,
                message: format!("unreadable header row: {e}"),
            });
            return out;
        }
    };
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line() as usize;
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let mut fields = Map::new();
                let mut bad = None;
                for (name, value) in headers.iter().zip(record.iter()) {
                    match std::str::from_utf8(value) {
                        Ok(v) => {
                            fields.insert(name.to_string(), Value::String(v.to_string()));
                        }
                        Err(_) => bad = Some(format!("column `{name}` is not valid UTF-8")),
                    }
                }
                let line = record.position().map(|p| p.line() as usize).unwrap_or(line);
                match bad {
                    Some(message) => out.unreadable.push(Unreadable { line, message }),
                    None => out.rows.push(Row { line, fields }),
                }
            }
            Err(e) => {
                let at = e.position().map(|p| p.line() as usize).unwrap_or(line);
                out.unreadable.push(Unreadable {
                    line: at,
                    message: format!("broken CSV: {}", csv_reason(&e)),
                });
                // A quoting error can swallow the rest of the file; stop rather than guess.
                if !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                    break;
                }
            }
        }
    }
    out
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("{len} fields where the header has {expected_len}")
        }
        _ => e.to_string(),
    }
}

/// Plain text: one record per block of lines separated by blank lines.
fn text_blocks(path: &Path, bytes: &[u8]) -> Result<ReadOutcome> {
    let text = utf8(path, bytes)?;
    let mut out = ReadOutcome::default();
    let mut block: Vec<&str> = Vec::new();
    let mut start = 0;
    let flush = |block: &mut Vec<&str>, start: usize, out: &mut ReadOutcome| {
        if !block.is_empty() {
            let mut fields = Map::new();
            fields.insert("text".into(), Value::String(block.join("\n")));
            out.rows.push(Row {
                line: start,
                fields,
            });
            block.clear();
        }
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut block, start, &mut out);
        } else {
            if block.is_empty() {
                start = i + 1;
            }
            block.push(line);
        }
    }
    flush(&mut block, start, &mut out);
    Ok(out)
}

/// Parquet (as the hub stores datasets): every row as JSON; lists and structs nest. The
/// parquet crate panics on some malformed metadata (found by fuzzing): contained.
fn parquet_rows(path: &Path) -> Result<ReadOutcome> {
    EngineError::contain_panic(
        path,
        "not a readable Parquet file: its metadata is malformed",
        || parquet_rows_unguarded(path),
    )
}

fn parquet_rows_unguarded(path: &Path) -> Result<ReadOutcome> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let bad = |e: parquet::errors::ParquetError| {
        EngineError::bad_file(path, format!("not a readable Parquet file: {e}"))
    };
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let mut out = ReadOutcome::default();
    for (i, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        match row.map(|r| r.to_json_value()) {
            Ok(Value::Object(fields)) => out.rows.push(Row {
                line: i + 1,
                fields,
            }),
            Ok(other) => out.unreadable.push(Unreadable {
                line: i + 1,
                message: format!("row is {}, expected a record", kind(&other)),
            }),
            Err(e) => {
                out.unreadable.push(Unreadable {
                    line: i + 1,
                    message: format!("unreadable row: {e}"),
                });
                break;
            }
        }
    }
    Ok(out)
}
