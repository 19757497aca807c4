//! A dataset file to training examples, with a report of every record that could not be
//! used (file, line, message) and a summary by reason. Bad records stop the load unless the
//! user chose to skip them; nothing is dropped silently.

use std::collections::BTreeMap;
use std::path::Path;

use super::batch::Example;
use super::cache::TokenCache;
pub use super::config::{DataConfig, DataReport, OnBadRecords, Problem, Truncation};
use super::encode::Encoder;
use super::format::{detect, to_record, Format, Record};
use super::read::read_rows;
use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

/// Reads the records of `path` and checks each against the format.
pub fn read_records(path: &Path, cfg: &DataConfig) -> Result<(Vec<(usize, Record)>, DataReport)> {
    let read = read_rows(path, &cfg.columns)?;
    let mut problems: Vec<Problem> = read
        .unreadable
        .iter()
        .map(|u| Problem {
            line: u.line,
            reason: "unreadable".into(),
            message: u.message.clone(),
        })
        .collect();
    // `auto` decides per record, so files mixing text and prompt/completion records work.
    let mut records = Vec::with_capacity(read.rows.len());
    let mut seen: BTreeMap<Format, usize> = BTreeMap::new();
    for row in &read.rows {
        let format = match cfg.format {
            Format::Auto => match detect(&row.fields) {
                Some(f) => f,
                None => {
                    let keys: Vec<&str> = row.fields.keys().map(String::as_str).collect();
                    problems.push(Problem {
                        line: row.line,
                        reason: "unknown format".into(),
                        message: format!(
                            "cannot tell the record format from the fields ({}); expected text, prompt/completion, instruction/output, messages or conversations, or choose the format and map the columns",
                            keys.join(", ")
                        ),
                    });
                    continue;
                }
            },
            chosen => chosen,
        };
        *seen.entry(format).or_default() += 1;
        match to_record(&row.fields, format) {
            Ok(r) => records.push((row.line, r)),
            Err(rej) => problems.push(Problem {
                line: row.line,
                reason: rej.reason.into(),
                message: rej.message,
            }),
        }
    }
    let format = match cfg.format {
        Format::Auto => seen
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(f, _)| f)
            .unwrap_or(Format::Auto),
        chosen => chosen,
    };
    problems.sort_by_key(|p| p.line);
    let report = DataReport {
        path: path.to_path_buf(),
        format,
        usable: records.len(),
        problems,
    };
    Ok((records, report))
}

/// Tokenizes records on every core, keeping their order; one result per record.
fn encode_parallel(encoder: &Encoder, records: &[(usize, Record)]) -> Vec<Result<Example>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = records.len().div_ceil(threads).max(256);
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|part| {
                let handle = scope.spawn(move || {
                    part.iter()
                        .map(|(_, r)| encoder.encode(r))
                        .collect::<Vec<_>>()
                });
                (part.len(), handle)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(len, h)| {
                // A failed thread fails each of its records, so none is lost or misnamed.
                h.join().unwrap_or_else(|_| {
                    (0..len)
                        .map(|_| Err(EngineError::Tokenizer("a tokenizer thread failed".into())))
                        .collect()
                })
            })
            .collect()
    })
}

/// Tokenizes records read by [`read_records`]; records the template cannot render join the
/// report's problems.
pub fn encode_records(
    records: &[(usize, Record)],
    report: &mut DataReport,
    tok: &TextTokenizer,
    cfg: &DataConfig,
) -> Result<Vec<Example>> {
    let encoder = Encoder::new(tok, cfg.train_on)?.seq2seq(cfg.decoder_start);
    let mut examples = Vec::with_capacity(records.len());
    for ((line, _), encoded) in records.iter().zip(encode_parallel(&encoder, records)) {
        match encoded {
            Ok(e) => examples.push(e),
            Err(e) => report.problems.push(Problem {
                line: *line,
                reason: "template error".into(),
                message: e.to_string(),
            }),
        }
    }
    report.problems.sort_by_key(|p| p.line);
    report.usable = examples.len();
    Ok(examples)
}

/// Reads and tokenizes a dataset. Records the template cannot render are problems too.
/// With `OnBadRecords::Stop` any problem is an error that lists them. With a cache, an
/// earlier tokenization of the same file, tokenizer, template and settings is reused.
pub fn load_examples_cached(
    path: &Path,
    tok: &TextTokenizer,
    cfg: &DataConfig,
    cache: Option<&TokenCache>,
) -> Result<(Vec<Example>, DataReport)> {
    let key = match cache {
        Some(_) => Some(TokenCache::key(path, tok, cfg)?),
        None => None,
    };
    let hit = cache.zip(key.as_deref()).and_then(|(c, k)| c.get(k));
    let (examples, report) = match hit {
        Some(found) => found,
        None => {
            let (records, mut report) = read_records(path, cfg)?;
            let examples = encode_records(&records, &mut report, tok, cfg)?;
            if let (Some(c), Some(k)) = (cache, key.as_deref()) {
                // A cache that cannot be written only costs time next run.
                let _ = c.put(k, &examples, &report);
            }
            (examples, report)
        }
    };
    if cfg.on_bad_records == OnBadRecords::Stop && !report.problems.is_empty() {
        let mut lines = report.problem_lines();
        let more = lines.len().saturating_sub(20);
        lines.truncate(20);
        if more > 0 {
            lines.push(format!("… and {more} more"));
        }
        return Err(EngineError::bad_file(
            path,
            format!(
                "{}\n{}\nfix these records, or set on_bad_records = \"skip\" to train on the rest",
                report.summary(),
                lines.join("\n")
            ),
        ));
    }
    Ok((examples, report))
}

/// [`load_examples_cached`] without a cache.
pub fn load_examples(
    path: &Path,
    tok: &TextTokenizer,
    cfg: &DataConfig,
) -> Result<(Vec<Example>, DataReport)> {
    load_examples_cached(path, tok, cfg, None)
}
