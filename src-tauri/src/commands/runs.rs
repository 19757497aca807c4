//! Runs: start, list, follow live, cancel, resume, compare. Training happens in a worker
//! process (this program in worker mode) that records into the catalog, so a closed or
//! reloaded window loses nothing: following a run reads the catalog, history first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use peft_studio_app::catalog::series::{SeriesOptions, XAxis};
use peft_studio_app::catalog::{MetricRow, Run, RunFilter};
use peft_studio_app::compare::{compare, Comparison};
use peft_studio_app::launch::{create_requested, requeue, start_in_background, RunRequest};
use peft_studio_app::runs::{detail, RunDetail};
use tauri::ipc::Channel;
use tauri::State;

use super::open_catalog;
use crate::error::{blocking, CommandResult};

/// Records a run and starts training it; returns its id.
#[tauri::command]
pub async fn start_run(
    request: RunRequest,
    chosen: State<'_, crate::paths::Chosen>,
) -> CommandResult<i64> {
    // The page's path is checked before anything else is looked up or opened.
    let dataset = crate::paths::read_source(&request.dataset, crate::paths::DATASET, &chosen)?;
    let mut eval = request.eval.clone();
    if let Some(data) = &eval.data {
        eval.data = Some(crate::paths::read_source(
            data,
            crate::paths::DATASET,
            &chosen,
        )?);
    }
    blocking(move || {
        let catalog = open_catalog()?;
        let id = create_requested(
            &catalog,
            RunRequest {
                dataset,
                eval,
                ..request
            },
        )?;
        start_in_background(catalog.path(), id)?;
        Ok(id)
    })
    .await
}

/// Every run, newest first; dead workers are found and their runs marked failed first.
#[tauri::command]
pub async fn list_runs() -> CommandResult<Vec<Run>> {
    blocking(|| {
        let catalog = open_catalog()?;
        catalog.reap_dead()?;
        Ok(catalog.runs(&RunFilter::default())?)
    })
    .await
}

/// A run, its checkpoints and adapters, and what can be done with it.
#[tauri::command]
pub async fn get_run(id: i64) -> CommandResult<RunDetail> {
    blocking(move || Ok(detail(&open_catalog()?, id)?)).await
}

/// Stop flags of the follows in progress, by the token the window gave each.
#[derive(Default)]
pub struct Follows(Mutex<HashMap<String, Arc<AtomicBool>>>);

/// Sends the run's metrics so far, then new rows as the worker records them, until the run
/// stops, the window leaves the run (`unfollow_run` with the same `token`) or goes away;
/// returns the run as it ended. Receivers keep the newest row per step (a resumed run's
/// history is sent again).
#[tauri::command]
pub async fn follow_run(
    id: i64,
    token: String,
    on_rows: Channel<Vec<MetricRow>>,
    follows: State<'_, Follows>,
) -> CommandResult<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    if let Ok(mut map) = follows.0.lock() {
        map.insert(token.clone(), stop.clone());
    }
    let result = blocking(move || {
        let catalog = open_catalog()?;
        let mut send = |rows: &[MetricRow]| {
            if on_rows.send(rows.to_vec()).is_err() {
                stop.store(true, Ordering::Relaxed);
            }
        };
        Ok(peft_studio_app::follow::follow(
            &catalog, id, &mut send, &stop,
        )?)
    })
    .await;
    if let Ok(mut map) = follows.0.lock() {
        map.remove(&token);
    }
    result
}

/// Ends the follow started with `token` (the window left the run's screen).
#[tauri::command]
pub fn unfollow_run(token: String, follows: State<'_, Follows>) {
    if let Some(stop) = follows.0.lock().ok().and_then(|m| m.get(&token).cloned()) {
        stop.store(true, Ordering::Relaxed);
    }
}

/// Asks a run to stop (a running one checkpoints first).
#[tauri::command]
pub async fn cancel_run(id: i64) -> CommandResult<()> {
    blocking(move || {
        open_catalog()?.request_cancel(id)?;
        Ok(())
    })
    .await
}

/// Continues a stopped run from its newest checkpoint, to `max_steps` in all when given.
#[tauri::command]
pub async fn resume_run(id: i64, max_steps: Option<usize>) -> CommandResult<()> {
    blocking(move || {
        let catalog = open_catalog()?;
        requeue(&catalog, id, max_steps)?;
        Ok(start_in_background(catalog.path(), id)?)
    })
    .await
}

/// The comparison of `ids` on the axis named `x`, at most `max_points` per curve.
fn comparison(
    ids: &[i64],
    x: &str,
    smoothing: f64,
    max_points: usize,
) -> CommandResult<Comparison> {
    let catalog = open_catalog()?;
    let runs = ids
        .iter()
        .map(|&id| catalog.run(id))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = SeriesOptions {
        x: x.parse::<XAxis>()?,
        max_points: max_points.clamp(10, 10_000),
        smoothing,
    };
    Ok(compare(&catalog, runs, &opts)?)
}

/// Curves of several runs on one x axis, smoothed, and the config fields that differ.
#[tauri::command]
pub async fn compare_runs(
    ids: Vec<i64>,
    x: String,
    smoothing: f64,
    max_points: Option<usize>,
) -> CommandResult<Comparison> {
    blocking(move || comparison(&ids, &x, smoothing, max_points.unwrap_or(1000))).await
}

/// The run's last events other than steps (data read, evaluations, checkpoints, the end), as
/// the worker logged them in `events.jsonl`, oldest first.
#[tauri::command]
pub async fn run_log(id: i64, limit: Option<usize>) -> CommandResult<Vec<serde_json::Value>> {
    blocking(move || {
        let run = open_catalog()?.run(id)?;
        Ok(peft_studio_app::runs::log(&run, limit.unwrap_or(50))?)
    })
    .await
}

/// Exports the run's newest checkpoint to `dest` (a new or empty folder): `peft` writes the
/// adapter as its reference library loads it (and records it), `merged` the base model with
/// the adapter folded in.
#[tauri::command]
pub async fn export_run(
    id: i64,
    format: String,
    dest: PathBuf,
    chosen: State<'_, crate::paths::Chosen>,
) -> CommandResult<PathBuf> {
    use peft_studio_app::export::{
        export_checkpoint, latest_checkpoint, record_adapter, ExportFormat,
    };
    let format: ExportFormat = format.parse()?;
    let extensions: &[&str] = if format.is_file() { &["gguf"] } else { &[] };
    let dest = crate::paths::write_destination(&dest, extensions, &chosen)?;
    blocking(move || {
        let catalog = open_catalog()?;
        let run = catalog.run(id)?;
        let checkpoint = latest_checkpoint(std::path::Path::new(&run.out_dir))?;
        export_checkpoint(&checkpoint, format, &dest)?;
        if format == ExportFormat::Peft {
            let cfg = peft_studio_app::runs::stored_config(&run)?;
            record_adapter(&catalog, id, &cfg, &dest)?;
        }
        Ok(dest)
    })
    .await
}

/// Draws the comparison chart into `dest` (`.png` or `.svg`, by its extension).
#[tauri::command]
pub async fn save_compare_chart(
    ids: Vec<i64>,
    x: String,
    smoothing: f64,
    log_y: bool,
    dest: PathBuf,
    chosen: State<'_, crate::paths::Chosen>,
) -> CommandResult<PathBuf> {
    let dest = crate::paths::write_destination(&dest, &["png", "svg"], &chosen)?;
    blocking(move || {
        let chart = peft_studio_app::chart::ChartOptions {
            log_y,
            x: x.parse::<XAxis>()?,
            ..Default::default()
        };
        let series = comparison(&ids, &x, smoothing, 2000)?.series;
        peft_studio_app::chart::render(&series, &chart, &dest)?;
        Ok(dest)
    })
    .await
}
