//! The dataset check: what the studio will make of a file before training on it.

use std::path::{Path, PathBuf};

use peft_studio_engine::data::format::Format;
use peft_studio_engine::data::load::{encode_records, read_records, DataConfig, DataReport};
use peft_studio_engine::data::stats::{token_stats, TokenStats};
use peft_studio_engine::data::Encoder;
use peft_studio_engine::library::{resolve, studio_home};
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::tokenizer::TextTokenizer;
use serde::Serialize;

use crate::error::{blocking, CommandResult};

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

/// Reads `path` as training would (default data settings, the record format detected or the
/// one given); with `model`, also renders a preview with that model's tokenizer and counts
/// tokens.
#[tauri::command]
pub async fn inspect_dataset(
    path: PathBuf,
    model: Option<String>,
    format: Option<Format>,
    chosen: tauri::State<'_, crate::paths::Chosen>,
) -> CommandResult<DatasetView> {
    let path = crate::paths::read_source(&path, crate::paths::DATASET, &chosen)?;
    blocking(move || {
        let cfg = DataConfig {
            format: format.unwrap_or_default(),
            ..DataConfig::default()
        };
        let (records, mut report) = read_records(&path, &cfg)?;
        let (mut preview, mut tokens, mut lengths) = (Vec::new(), None, Vec::new());
        if let Some(model) = model {
            let dir = resolve(&studio_home(), Path::new(&model))?;
            let tok = TextTokenizer::load(&dir, &LlamaConfig::from_path(&dir)?.eos_token_ids)?;
            let encoder = Encoder::new(&tok, cfg.train_on)?;
            for (line, record) in records.iter().take(5) {
                let r = encoder.render(record)?;
                preview.push(PreviewRecord {
                    line: *line,
                    trained: r.trained.iter().map(|t| (t.start, t.end)).collect(),
                    text: r.text,
                });
            }
            let examples = encode_records(&records, &mut report, &tok, cfg.train_on)?;
            lengths = examples.iter().map(|e| e.ids.len()).collect();
            tokens = Some(token_stats(&examples, usize::MAX));
        }
        Ok(DatasetView {
            path,
            summary: report.summary(),
            report,
            preview,
            tokens,
            lengths,
        })
    })
    .await
}
