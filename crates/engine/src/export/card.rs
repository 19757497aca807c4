//! The README model card written beside every exported adapter, as PEFT's `save_pretrained`
//! writes one: YAML front matter (base model, library, tags), then what a reader of a shared
//! adapter wants to know — base model, dataset, method, steps, final losses, every
//! hyperparameter, the studio version, and how to load it.

use std::path::Path;

use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::fsutil::write_atomic;
use crate::peft::{MethodConfig, MethodKind};
use crate::run_folder::events::train_events;
use crate::run_folder::RunConfig;
use crate::train::{TrainConfig, TrainEvent};

/// The `[method]` and `[train]` tables of a run config, as the card lists them.
#[derive(Serialize)]
struct Hyperparameters<'a> {
    method: &'a MethodConfig,
    train: &'a TrainConfig,
}

/// The figures of a run up to a step, read from its `events.jsonl`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunFigures {
    /// The last step reached.
    pub step: Option<usize>,
    /// The training loss at that step.
    pub train_loss: Option<f64>,
    /// The last validation loss.
    pub eval_loss: Option<f64>,
}

/// Reads the run's figures up to `up_to_step` (all of them when `None`). Unreadable lines
/// are skipped: a card is a courtesy and never stops an export.
pub fn run_figures(run_dir: &Path, up_to_step: Option<usize>) -> RunFigures {
    let within = |s: usize| up_to_step.is_none_or(|max| s <= max);
    let mut figures = RunFigures::default();
    for event in train_events(run_dir).unwrap_or_default() {
        match event {
            TrainEvent::Step(m) if within(m.step) => {
                figures.step = Some(m.step);
                figures.train_loss = Some(m.loss);
            }
            TrainEvent::Eval { step, eval_loss } if within(step) => {
                figures.eval_loss = Some(eval_loss)
            }
            _ => {}
        }
    }
    figures
}

/// What an export folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exported {
    /// The adapter alone, in its method's reference format.
    Adapter,
    /// The base model with the adapter folded in.
    MergedModel,
}

/// The library that loads the export, as the Hugging Face hub's `library_name` names it.
fn library(kind: MethodKind, what: Exported) -> &'static str {
    match (what, kind) {
        (Exported::MergedModel, _) => "transformers",
        (_, MethodKind::Houlsby | MethodKind::Pfeiffer) => "adapter-transformers",
        _ => "peft",
    }
}

/// How to load the export, in Python.
fn load_snippet(kind: MethodKind, what: Exported, base: &str) -> String {
    if what == Exported::MergedModel {
        return "from transformers import AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n".into();
    }
    match kind {
        MethodKind::Houlsby | MethodKind::Pfeiffer => format!(
            "import adapters\nfrom transformers import AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained(\"{base}\")\nadapters.init(model)\nname = model.load_adapter(\"path/to/this/folder\", use_safetensors=True)\nmodel.set_active_adapters(name)\n"
        ),
        _ => format!(
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\nbase = AutoModelForCausalLM.from_pretrained(\"{base}\")\nmodel = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n"
        ),
    }
}

fn figure(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), |v| format!("{v:.4}"))
}

/// How the run held the base's weights: its precision, or the block format a quantized base
/// (a GGUF file as stored, or `quantize`) kept its projections in.
fn base_weights(cfg: &RunConfig) -> String {
    let formats = crate::model::load::base_formats(&cfg.model, cfg.train.quantize);
    match formats.ok().flatten() {
        Some(f) => format!(
            "quantized, projections in {} (the adapter is a plain PEFT adapter: it loads on the \
             unquantized base as well)",
            f.projections
        ),
        None => cfg.train.precision.to_string(),
    }
}

/// The card's Markdown for run `cfg` with `figures`, the base model recorded as `base`.
pub fn model_card(
    cfg: &RunConfig,
    base: &str,
    what: Exported,
    figures: &RunFigures,
) -> Result<String> {
    let kind = cfg.method.kind;
    let dataset = cfg.dataset.file_name().map_or_else(
        || cfg.dataset.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let hyperparameters = toml::to_string_pretty(&Hyperparameters {
        method: &cfg.method,
        train: &cfg.train,
    })
    .map_err(|e| EngineError::config("run config", e.to_string()))?;
    let version = env!("CARGO_PKG_VERSION");
    Ok(format!(
        "---\nbase_model: {quoted}\nlibrary_name: {lib}\ntags:\n- peft-studio\n- {kind}\n---\n\n\
# {title}\n\n\
Trained and exported with PEFT Studio {version}.\n\n\
| | |\n|---|---|\n\
| Base model | `{base}` |\n\
| Base weights in training | {held} |\n\
| Dataset | `{dataset}` |\n\
| Method | {kind} |\n\
| Steps | {steps} |\n\
| Final training loss | {train} |\n\
| Final validation loss | {eval} |\n\n\
## Loading it\n\n```python\n{snippet}```\n\n\
## Hyperparameters\n\n```toml\n{hyperparameters}```\n",
        title = match what {
            Exported::Adapter => format!("{kind} adapter for `{base}`"),
            Exported::MergedModel => format!("`{base}` with a {kind} adapter merged in"),
        },
        // A JSON string is a YAML string: paths with `:` or `#` stay one value.
        quoted = serde_json::Value::from(base),
        lib = library(kind, what),
        steps = figures.step.map_or_else(|| "—".into(), |s| s.to_string()),
        train = figure(figures.train_loss),
        eval = figure(figures.eval_loss),
        snippet = load_snippet(kind, what, base),
        held = base_weights(cfg),
    ))
}

/// Writes `README.md` into the export folder `out`.
pub fn write_model_card(
    cfg: &RunConfig,
    base: &str,
    what: Exported,
    up_to_step: Option<usize>,
    out: &Path,
) -> Result<()> {
    let card = model_card(cfg, base, what, &run_figures(&cfg.out, up_to_step))?;
    write_atomic(&out.join("README.md"), card.as_bytes())
}
