//! Runs' configs as the front ends handle them: the engine types of a run config, a run's
//! stored config, the command line's overrides laid over a config, and a run's event log.
//! Recording and starting runs is `launch`.

use std::path::Path;

use peft_studio_catalog::{AdapterRecord, Catalog, Run, RunStatus};
use toml::Table;

pub use peft_studio_engine::data::format::Format;
pub use peft_studio_engine::data::{DataConfig, OnBadRecords};
pub use peft_studio_engine::eval::EvalConfig;
pub use peft_studio_engine::handoff::TargetConfig;
pub use peft_studio_engine::peft::target::parse_layers;
pub use peft_studio_engine::peft::{MethodConfig, MethodKind, PromptInit, TargetModules};
pub use peft_studio_engine::run_folder::{adapter_dir, RunConfig};
pub use peft_studio_engine::train::{Precision, Schedule, TrainConfig, TrainEvent, TrainSink};

use crate::error::{AppError, Result};

/// The config a run was recorded with.
pub fn stored_config(run: &Run) -> Result<RunConfig> {
    serde_json::from_value(run.config.clone())
        .map_err(|e| AppError::Invalid(format!("run {}: stored config is unreadable: {e}", run.id)))
}

/// The run's last `limit` events other than steps (data read, evaluations, checkpoints, the
/// end), as its worker logged them, oldest first.
pub fn log(run: &Run, limit: usize) -> Result<Vec<serde_json::Value>> {
    let mut events: Vec<serde_json::Value> =
        peft_studio_engine::run_folder::events::read(Path::new(&run.out_dir))?
            .into_iter()
            .filter(|v| v["event"] != "step")
            .collect();
    Ok(events.split_off(events.len().saturating_sub(limit)))
}

fn invalid(e: impl std::fmt::Display) -> AppError {
    AppError::Invalid(format!("run config: {e}"))
}

/// Lays `fields` over a `[method]` table. Choosing another method without naming targets
/// starts from the new method's default targets (they belong to a method); initial text for
/// prompt tuning implies the TEXT initialisation.
fn overlay_method(target: &mut Table, fields: &Table) {
    let switched = fields
        .get("kind")
        .is_some_and(|k| Some(k) != target.get("kind"));
    if switched && !fields.contains_key("target_modules") {
        target.remove("target_modules");
        target.remove("feedforward_modules");
    }
    if fields.contains_key("prompt_tuning_init_text") && !fields.contains_key("prompt_tuning_init")
    {
        target.insert("prompt_tuning_init".into(), "TEXT".into());
    }
    target.extend(fields.clone());
}

/// `method` with the given fields replaced (see [`with_overrides`]).
pub fn method_with_overrides(method: &MethodConfig, fields: &Table) -> Result<MethodConfig> {
    let mut table = Table::try_from(method).map_err(invalid)?;
    overlay_method(&mut table, fields);
    table.try_into().map_err(invalid)
}

/// `cfg` with `overrides` applied: `{method = {…}, train = {…}, data = {…}}`, each given field
/// replacing the config's (what the command line's flags do to a config file). TOML, as the
/// config file is: it holds every value the engine reads, NaN included, for the engine to
/// refuse by name.
pub fn with_overrides(cfg: &RunConfig, overrides: &Table) -> Result<RunConfig> {
    let mut merged = Table::try_from(cfg).map_err(invalid)?;
    for (name, fields) in overrides {
        // A table the config leaves out when unused (`[eval]`) starts empty.
        let target = merged
            .entry(name.clone())
            .or_insert_with(|| toml::Value::Table(Table::new()));
        let (Some(fields), Some(target)) = (fields.as_table(), target.as_table_mut()) else {
            return Err(invalid(format!("`{name}` is not a table of settings")));
        };
        match name.as_str() {
            "method" => overlay_method(target, fields),
            _ => target.extend(fields.clone()),
        }
    }
    merged.try_into().map_err(invalid)
}

/// One run with what it produced and what can be done with it, as the run view shows it.
#[derive(Debug, serde::Serialize)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Its checkpoints, oldest first, as (step, folder).
    pub checkpoints: Vec<(i64, String)>,
    /// Adapters it exported.
    pub adapters: Vec<AdapterRecord>,
    /// A worker is (or should be) behind it: it can be asked to stop.
    pub can_stop: bool,
    /// It stopped before its end (cancelled, or failed): it can continue from a checkpoint.
    pub can_resume: bool,
}

/// Run `id` of `catalog` with its checkpoints and adapters.
pub fn detail(catalog: &Catalog, id: i64) -> Result<RunDetail> {
    let run = catalog.run(id)?;
    let can_stop = run.status.is_live();
    let can_resume = matches!(run.status, RunStatus::Failed | RunStatus::Cancelled);
    Ok(RunDetail {
        checkpoints: catalog.checkpoints(id)?,
        adapters: catalog.adapters(Some(id))?,
        run,
        can_stop,
        can_resume,
    })
}
