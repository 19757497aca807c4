//! Datasets before training: every record checked, the first ones rendered as the model will
//! see them, token lengths counted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use peft_studio_engine::data::encode::Rendered;
use peft_studio_engine::data::load::{encode_records, load_examples, read_records};
use peft_studio_engine::data::stats::{mark_trained, token_stats};
use peft_studio_engine::data::{Encoder, OnBadRecords, TrainOn};
use peft_studio_engine::model::t5::{is_t5, T5Config};
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::tokenizer::TextTokenizer;
use peft_studio_engine::EngineError;
use serde::Serialize;

pub use peft_studio_engine::data::format::Format;
pub use peft_studio_engine::data::load::{DataConfig, DataReport};
pub use peft_studio_engine::data::stats::TokenStats;

use crate::error::Result;
use crate::models::resolve_model;

/// How a file is read for checking: `format` (`auto` detects per record), field renames as
/// `from=to` pairs separated by commas, and whether every token is trained. Unusable records
/// are listed, not fatal.
pub fn read_config(format: &str, columns: Option<&str>, train_on_all: bool) -> Result<DataConfig> {
    let mut renames = BTreeMap::new();
    for pair in columns
        .into_iter()
        .flat_map(|c| c.split(','))
        .filter(|p| !p.is_empty())
    {
        let (from, to) = pair
            .split_once('=')
            .ok_or_else(|| EngineError::config("columns", format!("`{pair}` is not `from=to`")))?;
        renames.insert(from.trim().to_string(), to.trim().to_string());
    }
    Ok(DataConfig {
        format: format.parse()?,
        columns: renames,
        train_on: if train_on_all {
            TrainOn::All
        } else {
            TrainOn::Completions
        },
        on_bad_records: OnBadRecords::Skip,
        ..Default::default()
    })
}

/// The tokenizer of a model (a folder or library name), and `cfg` as that model reads data:
/// a T5 reads records as source and target.
fn tokenizer(model: &Path, cfg: &DataConfig) -> Result<(TextTokenizer, DataConfig)> {
    let dir = resolve_model(model)?;
    let (eos, decoder_start) = match is_t5(&dir) {
        true => {
            let t5 = T5Config::from_path(&dir)?;
            (vec![t5.eos_token_id], Some(t5.decoder_start_token_id))
        }
        false => (LlamaConfig::from_path(&dir)?.eos_token_ids, None),
    };
    let cfg = DataConfig {
        decoder_start,
        ..cfg.clone()
    };
    Ok((TextTokenizer::load(&dir, &eos)?, cfg))
}

/// A rendered record: its text and the byte ranges that are trained.
#[derive(Debug, Serialize)]
pub struct PreviewRecord {
    /// Line (or element) of the file.
    pub line: usize,
    /// What the model sees.
    pub text: String,
    /// Trained byte ranges of `text`, as `[start, end)`.
    pub trained: Vec<(usize, usize)>,
}

impl PreviewRecord {
    /// The text with each trained range between `open` and `close`.
    pub fn marked(&self, open: &str, close: &str) -> String {
        let rendered = Rendered {
            text: self.text.clone(),
            trained: self.trained.iter().map(|&(a, b)| a..b).collect(),
        };
        mark_trained(&rendered, open, close)
    }
}

/// What checking a dataset found.
#[derive(Debug, Serialize)]
pub struct DatasetView {
    /// The file.
    pub path: PathBuf,
    /// Format, usable records and the rejected ones with their line numbers.
    pub report: DataReport,
    /// The report in one line.
    pub summary: String,
    /// The first records as the model will see them (with a model).
    pub preview: Vec<PreviewRecord>,
    /// Token lengths (with a model).
    pub tokens: Option<TokenStats>,
    /// Token length of each usable record (with a model), for the histogram.
    pub lengths: Vec<usize>,
}

/// Reads `path` as training would with `cfg`; with `model`, also renders the first
/// `preview` records with that model's tokenizer and counts tokens (examples longer than
/// `max_len` counted as over-long).
pub fn inspect(
    path: &Path,
    cfg: &DataConfig,
    model: Option<&Path>,
    preview: usize,
    max_len: usize,
) -> Result<DatasetView> {
    let (records, mut report) = read_records(path, cfg)?;
    let (mut shown, mut tokens, mut lengths) = (Vec::new(), None, Vec::new());
    if let Some(model) = model {
        let (tok, cfg) = tokenizer(model, cfg)?;
        let encoder = Encoder::new(&tok, cfg.train_on)?.seq2seq(cfg.decoder_start);
        for (line, record) in records.iter().take(preview) {
            let r = encoder.render(record)?;
            shown.push(PreviewRecord {
                line: *line,
                trained: r.trained.iter().map(|t| (t.start, t.end)).collect(),
                text: r.text,
            });
        }
        let examples = encode_records(&records, &mut report, &tok, &cfg)?;
        lengths = examples.iter().map(|e| e.ids.len()).collect();
        tokens = Some(token_stats(&examples, max_len));
    }
    Ok(DatasetView {
        path: path.to_path_buf(),
        summary: report.summary(),
        report,
        preview: shown,
        tokens,
        lengths,
    })
}

/// Every record of `path` read (and with `model`, tokenized) exactly as training would:
/// the report, and with a model the token statistics.
pub fn check(
    path: &Path,
    cfg: &DataConfig,
    model: Option<&Path>,
) -> Result<(DataReport, Option<TokenStats>)> {
    Ok(match model {
        Some(m) => {
            let (tok, cfg) = tokenizer(m, cfg)?;
            let (examples, report) = load_examples(path, &tok, &cfg)?;
            (report, Some(token_stats(&examples, usize::MAX)))
        }
        None => (read_records(path, cfg)?.1, None),
    })
}
