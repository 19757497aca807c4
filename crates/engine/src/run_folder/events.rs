//! The run's event log, `events.jsonl`: every training event as one JSON object a line,
//! appended as it happens (flushed per line, so that a crash loses nothing), and read back
//! here alone — by the model card, the worker's metric backfill and the run log.

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::train::{TrainEvent, TrainSink};

/// The log's file name inside a run folder.
pub const EVENTS_FILE: &str = "events.jsonl";

/// Appends events to a JSONL file, flushing each line so that a crash loses nothing.
pub struct EventLog {
    file: std::fs::File,
}

impl EventLog {
    /// Opens (or creates) the log for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EngineError::io(path, e))?;
        Ok(Self { file })
    }
}

impl TrainSink for EventLog {
    fn event(&mut self, event: &TrainEvent) {
        use std::io::Write;
        if let Ok(line) = serde_json::to_string(event) {
            let _ = writeln!(self.file, "{line}");
        }
    }
}

/// Every event line of the run in `run_dir`, oldest first, as written (a line that is not JSON,
/// e.g. the torn last line of a crash, is skipped); none when the run has not logged yet.
pub fn read(run_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = run_dir.join(EVENTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EngineError::io(&path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The training events of the run in `run_dir` (lines of other kinds skipped).
pub fn train_events(run_dir: &Path) -> Result<Vec<TrainEvent>> {
    Ok(read(run_dir)?
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}
