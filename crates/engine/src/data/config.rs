//! How a dataset is read (the `[data]` table of a run config) and what reading it found: the
//! types every other part of `data` builds on, so that none of them imports another's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::format::Format;

/// Which tokens are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainOn {
    /// Completions and assistant turns only.
    #[default]
    Completions,
    /// Every token, prompts and user turns included.
    All,
}

/// What to do with records that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBadRecords {
    /// Refuse the dataset, listing the problems.
    #[default]
    Stop,
    /// Train on the rest; the report still lists every skipped record.
    Skip,
}

/// How a dataset is read (the `[data]` table of a run config).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Record format; `auto` detects it from the fields.
    pub format: Format,
    /// Field renames, e.g. `{ question = "prompt", answer = "completion" }`.
    pub columns: BTreeMap<String, String>,
    /// Which tokens are trained.
    pub train_on: TrainOn,
    /// Skip unusable records or stop.
    pub on_bad_records: OnBadRecords,
    /// A separate validation file (instead of splitting off `train.val_fraction`).
    pub val_dataset: Option<PathBuf>,
    /// Keep the end (`left`: drop the start) or the start (`right`) of over-long examples.
    pub truncation: Truncation,
    /// Pack short examples into shared rows of `seq_len` tokens (see `Examples::packed`).
    pub packing: bool,
    /// For an encoder-decoder model (T5), the decoder's start token: records are then read as
    /// a source and a target. Set from the model by the run, never from a file.
    #[serde(skip)]
    pub decoder_start: Option<u32>,
}

/// Which end of an over-long example is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// Cut the end (keep the start).
    #[default]
    Right,
    /// Cut the start (keep the end, e.g. the last turns of a long chat).
    Left,
}

/// One unusable record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based line or element.
    pub line: usize,
    /// Summary group.
    pub reason: String,
    /// What is wrong.
    pub message: String,
}

/// What reading a dataset found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// The file.
    pub path: PathBuf,
    /// The format used (detected or chosen).
    pub format: Format,
    /// Records usable for training.
    pub usable: usize,
    /// Records rejected, in file order.
    pub problems: Vec<Problem>,
}

impl DataReport {
    /// One `FILE:LINE: message` line per problem.
    pub fn problem_lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("{}:{}: {}", self.path.display(), p.line, p.message))
            .collect()
    }

    /// `N usable, M rejected (k missing field, …)`.
    pub fn summary(&self) -> String {
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &self.problems {
            *by_reason.entry(p.reason.as_str()).or_default() += 1;
        }
        let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect();
        let mut s = format!(
            "{}: {} format, {} usable, {} rejected",
            self.path.display(),
            self.format,
            self.usable,
            self.problems.len()
        );
        if !reasons.is_empty() {
            s.push_str(&format!(" ({})", reasons.join(", ")));
        }
        s
    }
}
