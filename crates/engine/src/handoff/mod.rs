//! Handing a run to another trainer: Hugging Face accelerate driving transformers + PEFT, for
//! runs that outgrow this machine's engine (several GPUs, DeepSpeed, FSDP). The studio writes
//! the job's bundle (`bundle.rs`) from the run's own tokens, order and initial adapter, checks
//! the job's Python (`environment.rs`), launches it and follows its event lines into the same
//! sinks a local run feeds (`follow.rs`), and brings the trained adapter home. docs/HANDOFF.md.

pub mod bundle;
mod environment;
mod follow;
pub mod place;
pub mod target;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use place::Place;
pub use target::{JobDevice, Strategy, TargetConfig, TargetKind};

use crate::error::{EngineError, Result};
use crate::export::card::{write_model_card, Exported};
use crate::peft::MethodKind;
use crate::run_folder::events::{EventLog, EVENTS_FILE};
use crate::run_folder::RunConfig;
use crate::train::{TrainEvent, TrainSink};

/// Writes the bundle of `cfg` alone, to take to a machine the studio does not reach; returns
/// its folder (`<out>/job`).
pub fn write_bundle(cfg: &RunConfig) -> Result<PathBuf> {
    if cfg.target.is_local() {
        return Err(EngineError::config(
            "target",
            "a bundle is written for a hand-off; choose --target accelerate, ssh:HOST or slurm",
        ));
    }
    check(cfg)?;
    let (start, _) = start(cfg)?;
    let dir = bundle::bundle_dir(&cfg.out);
    bundle::write(cfg, &start, &dir)?;
    Ok(dir)
}

/// Refuses, naming the field, a hand-off whose job could not train as the studio would; called
/// beside `run::preflight` before the run is recorded.
pub fn check(cfg: &RunConfig) -> Result<()> {
    let target = &cfg.target;
    target.validate()?;
    if !matches!(
        cfg.method.kind,
        MethodKind::Lora | MethodKind::Ia3 | MethodKind::PromptTuning | MethodKind::PrefixTuning
    ) {
        return Err(EngineError::config(
            "method",
            format!(
                "`{}` trains here only; a hand-off trains PEFT's methods (lora, ia3, \
                 prompt-tuning, prefix-tuning)",
                cfg.method.kind
            ),
        ));
    }
    if crate::model::t5::is_t5(&cfg.model) || !cfg.model.is_dir() {
        return Err(EngineError::config(
            "model",
            "a hand-off trains a decoder-only Hugging Face folder (safetensors)",
        ));
    }
    if cfg.train.quantize.is_some() {
        return Err(EngineError::config(
            "quantize",
            "a hand-off trains the base as stored; leave `quantize` unset",
        ));
    }
    if cfg.eval.checked()?.is_some() {
        return Err(EngineError::config(
            "eval.task",
            "an evaluation at the end follows local training; evaluate the imported adapter \
             (`eval --run N`) when the job has finished",
        ));
    }
    if !cfg.train.grad_accum.is_multiple_of(target.processes) {
        return Err(EngineError::config(
            "grad_accum",
            format!(
                "{} micro-batches a step do not split evenly between {} processes; make it a \
                 multiple of target.processes",
                cfg.train.grad_accum, target.processes
            ),
        ));
    }
    Ok(())
}

/// The step of the job's newest complete checkpoint (where the job is), which a resumed
/// hand-off continues from.
pub fn latest_checkpoint(cfg: &RunConfig) -> Option<usize> {
    Place::of(&cfg.target, &bundle::bundle_dir(&cfg.out)).latest_checkpoint()
}

/// Trains `cfg` on its target: writes the bundle (kept when resuming: the same tokens, order
/// and initial adapter), checks the job's Python, launches the job and follows it — events to
/// `sink` and the run's event log — asking it to stop when `cancel` is set, then imports its
/// adapter into the run folder. Returns the adapter folder.
pub fn train(
    cfg: &RunConfig,
    resume: bool,
    sink: &mut dyn TrainSink,
    cancel: &AtomicBool,
) -> Result<PathBuf> {
    cfg.write_to_folder()?;
    let dir = bundle::bundle_dir(&cfg.out);
    let mut log = EventLog::open(&cfg.out.join(EVENTS_FILE))?;
    let mut fan = crate::train::events::Fanout(vec![sink, &mut log]);
    if !(resume && dir.join("job.json").exists()) {
        let (start, reports) = start(cfg)?;
        for report in &reports {
            fan.event(&TrainEvent::data(report));
        }
        bundle::write(cfg, &start, &dir)?;
    }
    let place = Place::of(&cfg.target, &dir);
    if !resume {
        place.send(&cfg.model)?;
    }
    environment::check(&cfg.target, &place)?;
    let finished = follow::run_job(&cfg.target, &place, resume, &mut fan, cancel)?;
    if finished.cancelled {
        return Err(EngineError::Cancelled);
    }
    place.fetch_adapter()?;
    import_adapter(cfg, &bundle::job_out(&dir).join("adapter"))?;
    Ok(cfg.adapter_dir())
}

/// The run's examples and its method's initial values, from config.json and the tokenizer
/// where the method allows (a base larger than this machine's memory is never loaded here);
/// otherwise the model is loaded, the method applied as a local run does, and dropped before
/// the job needs the memory.
fn start(cfg: &RunConfig) -> Result<(bundle::Start, Vec<crate::data::DataReport>)> {
    let config = crate::model::LlamaConfig::from_path(&cfg.model)?;
    let dtype = cfg.train.precision.dtype();
    if let Some(initial) = cfg.method.initial_values(&config, cfg.train.seed, dtype)? {
        let (train, val, reports) = crate::run::prepare_data(cfg)?;
        return Ok((
            bundle::Start {
                train,
                val,
                initial,
            },
            reports,
        ));
    }
    let p = crate::run::prepare(cfg)?;
    let initial = p
        .trainables
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let start = bundle::Start {
        train: p.train,
        val: p.val,
        initial,
    };
    Ok((start, p.reports))
}

/// Copies the job's PEFT adapter into the run's adapter folder, with the studio's model card.
fn import_adapter(cfg: &RunConfig, from: &Path) -> Result<()> {
    let to = cfg.adapter_dir();
    std::fs::create_dir_all(&to).map_err(|e| EngineError::io(&to, e))?;
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        let src = from.join(name);
        if !src.exists() {
            return Err(EngineError::bad_file(
                from,
                format!("the job finished without writing {name}"),
            ));
        }
        std::fs::copy(&src, to.join(name)).map_err(|e| EngineError::io(&src, e))?;
    }
    let base = std::fs::canonicalize(&cfg.model).unwrap_or_else(|_| cfg.model.clone());
    write_model_card(
        cfg,
        &base.display().to_string(),
        Exported::Adapter,
        None,
        &to,
    )
}
