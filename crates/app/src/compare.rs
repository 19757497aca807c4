//! Comparing runs: their curves on one axis and the config fields that differ, as the CLI's
//! `compare` and the desktop's Compare screen show them.

use std::collections::BTreeMap;

use peft_studio_catalog::series::{config_diff, RunSeries, SeriesOptions};
use peft_studio_catalog::{Catalog, Run};
use serde::Serialize;

use crate::error::{AppError, Result};

/// Runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The runs, in the order asked.
    pub runs: Vec<Run>,
    /// Their curves (label `ID NAME`).
    pub series: Vec<RunSeries>,
    /// Config fields whose values differ, one value (or none) per run.
    pub config_diff: BTreeMap<String, Vec<Option<serde_json::Value>>>,
    /// The runs' evaluations (`eval`), oldest first.
    pub evaluations: Vec<peft_studio_catalog::Evaluation>,
}

/// Compares `runs` with curves built as `opts` asks.
pub fn compare(catalog: &Catalog, runs: Vec<Run>, opts: &SeriesOptions) -> Result<Comparison> {
    if !(0.0..1.0).contains(&opts.smoothing) {
        return Err(AppError::Invalid(format!(
            "smoothing {} is not in [0, 1)",
            opts.smoothing
        )));
    }
    let series = runs
        .iter()
        .map(|r| catalog.series(r.id, &format!("{} {}", r.id, r.name), opts))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // Every run has a folder of its own; that difference says nothing.
    let configs: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let mut c = r.config.clone();
            if let Some(map) = c.as_object_mut() {
                map.remove("out");
            }
            c
        })
        .collect();
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    Ok(Comparison {
        config_diff: config_diff(&configs),
        evaluations: catalog.evaluations(&ids)?,
        runs,
        series,
    })
}
