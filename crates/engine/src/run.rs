//! A training run on disk: its config (`run.toml`), checkpoints and exported adapter.
//!
//! ```text
//! <out>/run.toml            the resolved config (what resume reads)
//! <out>/events.jsonl        every training event, one JSON object a line
//! <out>/checkpoints/step-N  resumable checkpoints
//! <out>/adapter/            the final adapter in PEFT format (LoRA runs)
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::data::{load_examples_cached, DataConfig, DataReport, Examples, TokenCache};
use crate::error::{EngineError, Result};
use crate::export::card::Exported;
use crate::export::gguf_model::GgufType;
use crate::export::{write_peft_dir, ExportInfo};
use crate::fsutil::write_atomic;
use crate::model::load::load_model_quantized;
use crate::model::{load_model, LlamaModel};
use crate::peft::{MethodConfig, MethodKind, Trainables};
use crate::tokenizer::TextTokenizer;
use crate::train::{checkpoint, TrainConfig, TrainEvent, TrainSink, Trainer};

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
        for p in [&mut cfg.model, &mut cfg.dataset, &mut cfg.out]
            .into_iter()
            .chain(val)
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

    /// Checkpoints folder of the run.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Where the final adapter is written.
    pub fn adapter_dir(&self) -> PathBuf {
        self.out.join("adapter")
    }
}

/// A model with its method applied, its tokenizer, and the data, ready to train.
pub struct Prepared {
    /// The wrapped model.
    pub model: LlamaModel,
    /// What the method trains.
    pub trainables: Trainables,
    /// Training examples.
    pub train: Examples,
    /// Validation examples.
    pub val: Option<Examples>,
    /// What reading each dataset found (training, then a separate validation file).
    pub reports: Vec<DataReport>,
}

pub use crate::device::default_device;

/// Loads the model, applies the method and reads the dataset.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    cfg.train.validate()?;
    let device = default_device();
    let dtype = cfg.train.precision.dtype();
    let mut model = load_model_quantized(&cfg.model, dtype, &device, cfg.train.quantize)?;
    let tok = TextTokenizer::load(&cfg.model, &model.config().eos_token_ids)?;
    let trainables = cfg
        .method
        .apply_with(&mut model, cfg.train.seed, Some(&tok))?;
    let cache = TokenCache::new(crate::library::studio_home().join("cache").join("tokens"));
    let mut reports = Vec::new();
    let mut examples_of = |path: &Path| -> Result<Examples> {
        let (examples, report) = load_examples_cached(path, &tok, &cfg.data, Some(&cache))?;
        reports.push(report);
        Examples::with_truncation(
            examples,
            cfg.train.seq_len,
            cfg.train.batch_size,
            cfg.train.seed,
            cfg.data.truncation,
        )
        .map(|e| {
            if cfg.data.packing {
                e.packed(cfg.train.seq_len)
            } else {
                e
            }
        })
        .map_err(|e| match e {
            EngineError::Config { message, .. } => EngineError::bad_file(path, message),
            other => other,
        })
    };
    let examples = examples_of(&cfg.dataset)?;
    let (train, val) = match &cfg.data.val_dataset {
        Some(path) => (examples, Some(examples_of(path)?)),
        None => examples.split(cfg.train.val_fraction)?,
    };
    Ok(Prepared {
        model,
        trainables,
        train,
        val,
        reports,
    })
}

/// Everything a run needs, checked without loading the weights, so that a run that cannot
/// start is refused before it is recorded or its folder made: the settings, the model folder
/// (config.json, every weight header against the shapes it implies, the tokenizer), the
/// method against the model (targets, ranks, layers), and every record of the datasets
/// (tokenized once; the worker then finds them in the token cache).
pub fn preflight(cfg: &RunConfig) -> Result<()> {
    cfg.train.validate()?;
    let summary = crate::library::weights::check_folder(&cfg.model)?;
    crate::plan::count_params(&summary.config, &cfg.method)?;
    let tok = TextTokenizer::load(&cfg.model, &summary.config.eos_token_ids)?;
    let cache = TokenCache::new(crate::library::studio_home().join("cache").join("tokens"));
    for path in std::iter::once(&cfg.dataset).chain(cfg.data.val_dataset.as_ref()) {
        load_examples_cached(path, &tok, &cfg.data, Some(&cache))?;
    }
    Ok(())
}

/// Trains (from scratch, or from the newest checkpoint when `resume`), then exports the
/// adapter. Events go to `sink` and to `<out>/events.jsonl`.
pub fn train(
    cfg: &RunConfig,
    resume: bool,
    sink: &mut dyn TrainSink,
    cancel: &AtomicBool,
) -> Result<PathBuf> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| EngineError::io(&cfg.out, e))?;
    let run_toml = cfg.out.join("run.toml");
    if !resume && checkpoint::list(&cfg.checkpoints_dir()).last().is_some() {
        return Err(EngineError::bad_file(
            &cfg.out,
            "already holds a run with checkpoints; resume it or choose another folder",
        ));
    }
    write_atomic(&run_toml, cfg.to_toml()?.as_bytes())?;
    let p = prepare(cfg)?;
    let mut trainer = Trainer::new(&p.model, p.trainables, cfg.train.clone(), p.train, p.val)?;
    if resume {
        let (_, latest) = checkpoint::list(&cfg.checkpoints_dir())
            .pop()
            .ok_or_else(|| {
                EngineError::bad_file(cfg.checkpoints_dir(), "no checkpoint to resume from")
            })?;
        trainer.restore(&latest)?;
    }
    let mut log = EventLog::open(&cfg.out.join("events.jsonl"))?;
    let mut fan = crate::train::events::Fanout(vec![sink, &mut log]);
    for report in &p.reports {
        fan.event(&TrainEvent::Data {
            summary: report.summary(),
            problems: report.problem_lines(),
        });
    }
    trainer.run(&mut fan, cancel, Some(&cfg.checkpoints_dir()))?;
    if trainer.step() < trainer.total_steps() {
        return Err(EngineError::Cancelled);
    }
    export_params(cfg, &trainer.params(), None, &cfg.adapter_dir())?;
    Ok(cfg.adapter_dir())
}

/// Reads `run.toml` of a run folder.
pub fn load_run(dir: &Path) -> Result<RunConfig> {
    let path = dir.join("run.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    toml::from_str(&text).map_err(|e| EngineError::bad_file(&path, e.to_string()))
}

/// Writes trained parameters in the run's export format (PEFT for LoRA, IA³, prompt and prefix
/// tuning; the adapters library's for Houlsby and Pfeiffer; the trained
/// tensors as safetensors under their transformers names for freeze and full runs).
pub fn export_params(
    cfg: &RunConfig,
    params: &[(String, candle_core::Tensor)],
    step: Option<usize>,
    out: &Path,
) -> Result<()> {
    let base = std::fs::canonicalize(&cfg.model).unwrap_or_else(|_| cfg.model.clone());
    let base = base.display().to_string();
    match cfg.method.kind {
        MethodKind::Lora
        | MethodKind::Ia3
        | MethodKind::PromptTuning
        | MethodKind::PrefixTuning => write_peft_dir(
            out,
            &cfg.method,
            &ExportInfo {
                base_model: base.clone(),
            },
            params,
        )?,
        MethodKind::Houlsby | MethodKind::Pfeiffer => {
            crate::export::adapters_lib::write_adapters_dir(
                out,
                &cfg.method,
                &crate::model::LlamaConfig::from_path(&cfg.model)?,
                &base,
                params,
            )?
        }
        MethodKind::Freeze | MethodKind::Full => write_atomic(
            &out.join("trained.safetensors"),
            &crate::fsutil::safetensors_bytes(params, None)?,
        )?,
    }
    crate::export::card::write_model_card(cfg, &base, Exported::Adapter, step, out)
}

/// The run config and the contents of a checkpoint folder (`<run>/checkpoints/step-N`).
fn run_and_checkpoint(checkpoint_dir: &Path) -> Result<(RunConfig, checkpoint::Checkpoint)> {
    let run_dir = checkpoint_dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| {
            EngineError::bad_file(
                checkpoint_dir,
                "is not inside a run folder (<run>/checkpoints/step-N)",
            )
        })?;
    Ok((load_run(run_dir)?, checkpoint::load(checkpoint_dir)?))
}

/// A checkpoint's run config, its trained parameters sorted by name, and its step.
type RunParams = (RunConfig, Vec<(String, candle_core::Tensor)>, usize);

fn run_and_params(checkpoint_dir: &Path) -> Result<RunParams> {
    let (cfg, ck) = run_and_checkpoint(checkpoint_dir)?;
    let mut params: Vec<(String, candle_core::Tensor)> = ck.params.into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((cfg, params, ck.state.step))
}

/// Exports a checkpoint's LoRA as a llama.cpp GGUF adapter file `out`.
pub fn export_gguf_lora(checkpoint_dir: &Path, out: &Path) -> Result<()> {
    let (cfg, params, _) = run_and_params(checkpoint_dir)?;
    let model = crate::model::LlamaConfig::from_path(&cfg.model)?;
    crate::export::gguf_lora::write_gguf_lora(&model, &cfg.method, &params, out)
}

/// Exports a checkpoint folder (`<run>/checkpoints/step-N`) to `out`.
pub fn export_checkpoint(checkpoint_dir: &Path, out: &Path) -> Result<()> {
    let (cfg, params, step) = run_and_params(checkpoint_dir)?;
    export_params(&cfg, &params, Some(step), out)
}

/// Appends events to a JSONL file, flushing each line so that a crash loses nothing.
struct EventLog {
    file: std::fs::File,
}

impl EventLog {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EngineError::io(path, e))?;
        Ok(Self { file })
    }
}

impl TrainSink for EventLog {
    fn event(&mut self, event: &crate::train::TrainEvent) {
        use std::io::Write;
        if let Ok(line) = serde_json::to_string(event) {
            let _ = writeln!(self.file, "{line}");
        }
    }
}

/// The run's base model with a checkpoint's trained parameters set (LoRA, DoRA and IA³
/// adapters still attached; freeze and full runs' trained weights in place), the run, and the
/// checkpoint's step.
fn trained_model(checkpoint_dir: &Path) -> Result<(RunConfig, LlamaModel, usize)> {
    let (cfg, ck) = run_and_checkpoint(checkpoint_dir)?;
    let mut model = load_model(&cfg.model, DType::F32, &default_device())?;
    let vars = cfg.method.apply(&mut model, cfg.train.seed)?;
    for (name, var) in &vars {
        let trained = ck.params.get(name).ok_or_else(|| {
            EngineError::bad_file(
                checkpoint_dir,
                format!("lacks `{name}`; it belongs to another run"),
            )
        })?;
        var.set(&trained.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok((cfg, model, ck.state.step))
}

/// Writes the run's base model with a checkpoint's trained parameters merged in, as a Hugging
/// Face folder at `out` (LoRA, DoRA and IA³ adapters folded into the weights; freeze and full
/// runs' trained weights in place).
pub fn export_merged(checkpoint_dir: &Path, out: &Path) -> Result<()> {
    use crate::export::merged::{write_merged_model, MAX_SHARD_BYTES};
    let (cfg, model, step) = trained_model(checkpoint_dir)?;
    write_merged_model(&model, &cfg.model, out, MAX_SHARD_BYTES)?;
    let base = std::fs::canonicalize(&cfg.model).unwrap_or_else(|_| cfg.model.clone());
    let base = base.display().to_string();
    crate::export::card::write_model_card(&cfg, &base, Exported::MergedModel, Some(step), out)
}

/// Writes the run's base model with a checkpoint merged in as one GGUF file `out`.
pub fn export_merged_gguf(checkpoint_dir: &Path, ty: GgufType, out: &Path) -> Result<()> {
    let (cfg, mut model, _) = trained_model(checkpoint_dir)?;
    crate::peft::merge::merge_adapters(&mut model)?;
    let name = run_model_name(&cfg);
    crate::export::gguf_model::write_gguf_model(&mut model, &cfg.model, &name, ty, out)
}

/// Converts the model folder `model_dir` to one GGUF file `out`.
pub fn convert_to_gguf(model_dir: &Path, ty: GgufType, out: &Path) -> Result<()> {
    let mut model = load_model(model_dir, DType::F32, &default_device())?;
    let name = folder_name(model_dir);
    crate::export::gguf_model::write_gguf_model(&mut model, model_dir, &name, ty, out)
}

fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}

/// `<base model> + <run folder>`, the name a merged model is given.
fn run_model_name(cfg: &RunConfig) -> String {
    format!("{} + {}", folder_name(&cfg.model), folder_name(&cfg.out))
}
