//! A training run on disk: its config (`run.toml`), event log, checkpoints and adapter. The
//! engine's lower modules (export's model card) read a run through this, never through
//! `run`, which trains and exports.
//!
//! ```text
//! <out>/run.toml            the resolved config (what resume reads)
//! <out>/events.jsonl        every training event, one JSON object a line (events.rs)
//! <out>/checkpoints/step-N  resumable checkpoints
//! <out>/adapter/            the final adapter in its method's reference format
//! ```

pub mod events;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::error::{EngineError, Result};
use crate::eval::EvalConfig;
use crate::handoff::target::TargetConfig;
use crate::peft::MethodConfig;
use crate::train::TrainConfig;

/// Everything a run needs; the TOML form of it is what `train --config` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The base model: a Hugging Face folder (config.json, safetensors, tokenizer.json).
    pub model: PathBuf,
    /// The training data: JSONL, JSON, CSV/TSV or text (see `[data]` for formats).
    pub dataset: PathBuf,
    /// The run folder (created; checkpoints and the adapter go inside).
    pub out: PathBuf,
    /// The method and its settings.
    #[serde(default)]
    pub method: MethodConfig,
    /// Optimiser, schedule, batching and bookkeeping.
    #[serde(default)]
    pub train: TrainConfig,
    /// Record format, masking, bad-record policy, validation file, truncation side.
    #[serde(default)]
    pub data: DataConfig,
    /// An evaluation of the trained adapter at the end (none by default).
    #[serde(default, skip_serializing_if = "EvalConfig::is_off")]
    pub eval: EvalConfig,
    /// Where it trains: this machine's engine (the default), or a job handed to accelerate.
    #[serde(default, skip_serializing_if = "TargetConfig::is_local")]
    pub target: TargetConfig,
}

impl RunConfig {
    /// Reads a run config from a TOML file; unknown keys are errors naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let mut cfg: RunConfig =
            toml::from_str(&text).map_err(|e| EngineError::bad_file(path, e.to_string()))?;
        // Relative paths in a config file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        let val = cfg.data.val_dataset.as_mut();
        let eval = cfg.eval.data.as_mut();
        for p in [&mut cfg.model, &mut cfg.dataset, &mut cfg.out]
            .into_iter()
            .chain(val)
            .chain(eval)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| EngineError::config("run config", e.to_string()))
    }

    /// Creates the run folder and writes this config into it as `run.toml` (what resume reads).
    pub fn write_to_folder(&self) -> Result<()> {
        std::fs::create_dir_all(&self.out).map_err(|e| EngineError::io(&self.out, e))?;
        crate::fsutil::write_atomic(&self.out.join(RUN_TOML), self.to_toml()?.as_bytes())
    }

    /// Checkpoints folder of the run.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Where the final adapter is written.
    pub fn adapter_dir(&self) -> PathBuf {
        adapter_dir(&self.out)
    }
}

/// Where the final adapter of the run in `out` is written.
pub fn adapter_dir(out: &Path) -> PathBuf {
    out.join("adapter")
}

/// The config's file name inside a run folder.
const RUN_TOML: &str = "run.toml";

/// Reads `run.toml` of a run folder.
pub fn load_run(dir: &Path) -> Result<RunConfig> {
    let path = dir.join(RUN_TOML);
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    toml::from_str(&text).map_err(|e| EngineError::bad_file(&path, e.to_string()))
}
