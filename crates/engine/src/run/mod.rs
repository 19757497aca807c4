//! Training a run: everything checked before it is recorded (`preflight`), the model, method
//! and data made ready (`prepare`), then trained with events to the caller and the run's
//! event log, and the adapter written. Exports of its checkpoints are in `export.rs`; the run
//! folder's layout and config in `run_folder`.

mod export;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::data::{load_examples_cached, DataConfig, DataReport, Examples, TokenCache};
use crate::device::default_device;
use crate::error::{EngineError, Result};
use crate::model::load::load_model_held;
use crate::model::t5::{is_t5, no_quantization, T5Model};
use crate::model::LlamaModel;
use crate::peft::Trainables;
use crate::run_folder::events::{EventLog, EVENTS_FILE};
use crate::tokenizer::TextTokenizer;
use crate::train::{checkpoint, Objective, TrainEvent, TrainSink, Trainer};

pub use crate::run_folder::{load_run, RunConfig};
pub use export::{
    convert_to_gguf, export_checkpoint, export_gguf_lora, export_merged, export_merged_gguf,
    export_params,
};

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

/// Loads the model, applies the method and reads the dataset.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    cfg.train.validate()?;
    let device = default_device();
    let dtype = cfg.train.precision.dtype();
    let frozen = cfg.method.kind.keeps_base_frozen();
    let mut model = load_model_held(&cfg.model, dtype, &device, cfg.train.quantize, frozen)?;
    let tok = TextTokenizer::load(&cfg.model, &model.config().eos_token_ids)?;
    let trainables = cfg
        .method
        .apply_with(&mut model, cfg.train.seed, Some(&tok))?;
    let (train, val, reports) = read_datasets(cfg, &tok, &cfg.data)?;
    Ok(Prepared {
        model,
        trainables,
        train,
        val,
        reports,
    })
}

/// The training and validation examples of a decoder-only run and what reading each file
/// found, without loading the weights (the tokenizer and config.json suffice).
pub fn prepare_data(cfg: &RunConfig) -> Result<(Examples, Option<Examples>, Vec<DataReport>)> {
    cfg.train.validate()?;
    let config = crate::model::LlamaConfig::from_path(&cfg.model)?;
    let tok = TextTokenizer::load(&cfg.model, &config.eos_token_ids)?;
    read_datasets(cfg, &tok, &cfg.data)
}

/// A T5 model with its method applied and the data read as sources and targets.
pub struct PreparedT5 {
    /// The wrapped model.
    pub model: T5Model,
    /// What the method trains.
    pub trainables: Trainables,
    /// Training examples.
    pub train: Examples,
    /// Validation examples.
    pub val: Option<Examples>,
    /// What reading each dataset found.
    pub reports: Vec<DataReport>,
}

/// [`prepare`] for a T5 folder.
pub fn prepare_t5(cfg: &RunConfig) -> Result<PreparedT5> {
    cfg.train.validate()?;
    let dtype = cfg.train.precision.dtype();
    let mut model =
        T5Model::load_quantized(&cfg.model, dtype, &default_device(), cfg.train.quantize)?;
    let tok = TextTokenizer::load(&cfg.model, &[model.config().eos_token_id])?;
    let trainables = cfg
        .method
        .apply_t5(&mut model, cfg.train.seed, Some(&tok))?;
    let data = seq2seq_data(cfg, model.config().decoder_start_token_id)?;
    let (train, val, reports) = read_datasets(cfg, &tok, &data)?;
    Ok(PreparedT5 {
        model,
        trainables,
        train,
        val,
        reports,
    })
}

/// The run's `[data]` as a T5 reads it: records framed as source and target; packing, which
/// would join examples, refused.
fn seq2seq_data(cfg: &RunConfig, start: u32) -> Result<DataConfig> {
    if cfg.data.packing {
        return Err(EngineError::config("packing", "is not available for T5"));
    }
    Ok(DataConfig {
        decoder_start: Some(start),
        ..cfg.data.clone()
    })
}

/// The run's training and validation examples (a separate file, or a held-out share) and
/// what reading each file found, tokenized once into the token cache.
fn read_datasets(
    cfg: &RunConfig,
    tok: &TextTokenizer,
    data: &DataConfig,
) -> Result<(Examples, Option<Examples>, Vec<DataReport>)> {
    let cache = token_cache();
    let mut reports = Vec::new();
    let mut examples_of = |path: &Path| -> Result<Examples> {
        let (examples, report) = load_examples_cached(path, tok, data, Some(&cache))?;
        reports.push(report);
        Examples::with_truncation(
            examples,
            cfg.train.seq_len,
            cfg.train.batch_size,
            cfg.train.seed,
            data.truncation,
        )
        .map(|e| {
            if data.packing {
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
    let (train, val) = match &data.val_dataset {
        Some(path) => (examples, Some(examples_of(path)?)),
        None => examples.split(cfg.train.val_fraction)?,
    };
    Ok((train, val, reports))
}

/// Everything a run needs, checked without loading the weights, so that a run that cannot
/// start is refused before it is recorded or its folder made: the settings, the model folder
/// (config.json, every weight header against the shapes it implies, the tokenizer), the
/// method against the model (targets, ranks, layers), and every record of the datasets
/// (tokenized once; the worker then finds them in the token cache).
pub fn preflight(cfg: &RunConfig) -> Result<()> {
    cfg.train.validate()?;
    if cfg.eval.checked()?.is_some() && is_t5(&cfg.model) {
        return Err(EngineError::config(
            "eval.task",
            "an evaluation at the end measures decoder-only models; T5 is not evaluated yet",
        ));
    }
    let (tok, data) = if is_t5(&cfg.model) {
        no_quantization(cfg.train.quantize)?;
        let summary = crate::library::weights::check_t5_folder(&cfg.model)?;
        crate::plan::count_params_t5(&summary.config, &cfg.method)?;
        let tok = TextTokenizer::load(&cfg.model, &[summary.config.eos_token_id])?;
        (
            tok,
            seq2seq_data(cfg, summary.config.decoder_start_token_id)?,
        )
    } else {
        let summary = crate::library::weights::check_folder(&cfg.model)?;
        crate::plan::count_params(&summary.config, &cfg.method)?;
        let tok = TextTokenizer::load(&cfg.model, &summary.config.eos_token_ids)?;
        (tok, cfg.data.clone())
    };
    let cache = token_cache();
    for path in std::iter::once(&cfg.dataset).chain(data.val_dataset.as_ref()) {
        load_examples_cached(path, &tok, &data, Some(&cache))?;
    }
    Ok(())
}

/// The studio's token cache, which preflight fills and training reads.
fn token_cache() -> TokenCache {
    TokenCache::new(crate::library::studio_home().join("cache").join("tokens"))
}

/// Trains (from scratch, or from the newest checkpoint when `resume`), then exports the
/// adapter. Events go to `sink` and to `<out>/events.jsonl`.
pub fn train(
    cfg: &RunConfig,
    resume: bool,
    sink: &mut dyn TrainSink,
    cancel: &AtomicBool,
) -> Result<PathBuf> {
    if !resume && checkpoint::list(&cfg.checkpoints_dir()).last().is_some() {
        return Err(EngineError::bad_file(
            &cfg.out,
            "already holds a run with checkpoints; resume it or choose another folder",
        ));
    }
    cfg.write_to_folder()?;
    // The model must outlive its trainer: both kinds are held here, one of them used.
    let (decoder, seq2seq): (LlamaModel, _);
    let mut decoder_model = None;
    let (objective, trainables, train, val, reports): (&dyn Objective, _, _, _, _) =
        if is_t5(&cfg.model) {
            let p = prepare_t5(cfg)?;
            seq2seq = p.model;
            (&seq2seq, p.trainables, p.train, p.val, p.reports)
        } else {
            let p = prepare(cfg)?;
            decoder = p.model;
            decoder_model = Some(&decoder);
            (&decoder, p.trainables, p.train, p.val, p.reports)
        };
    let mut trainer = Trainer::new(objective, trainables, cfg.train.clone(), train, val)?;
    if resume {
        let (_, latest) = checkpoint::list(&cfg.checkpoints_dir())
            .pop()
            .ok_or_else(|| {
                EngineError::bad_file(cfg.checkpoints_dir(), "no checkpoint to resume from")
            })?;
        trainer.restore(&latest)?;
    }
    let mut log = EventLog::open(&cfg.out.join(EVENTS_FILE))?;
    let mut fan = crate::train::events::Fanout(vec![sink, &mut log]);
    for report in &reports {
        fan.event(&TrainEvent::data(report));
    }
    trainer.run(&mut fan, cancel, Some(&cfg.checkpoints_dir()))?;
    if trainer.step() < trainer.total_steps() {
        return Err(EngineError::Cancelled);
    }
    export_params(cfg, &trainer.params(), None, &cfg.adapter_dir())?;
    if let (Some((task, data)), Some(model)) = (cfg.eval.checked()?, decoder_model) {
        let tok = TextTokenizer::load(&cfg.model, &model.config().eos_token_ids)?;
        let settings = crate::eval::Settings {
            data: cfg.data.clone(),
            max_new_tokens: cfg.eval.max_new_tokens,
        };
        let report = crate::eval::evaluate(model, &tok, task, data, &settings, &mut |_, _| {})?;
        fan.event(&TrainEvent::Evaluated {
            adapter: cfg.adapter_dir().display().to_string(),
            task: task.name().into(),
            dataset: data.display().to_string(),
            items: report.items,
            metrics: report.metrics,
        });
    }
    Ok(cfg.adapter_dir())
}
