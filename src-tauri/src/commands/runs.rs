//! Runs: start, list, follow live, cancel, resume, compare. Training happens in a worker
//! process (this program in worker mode) that records into the catalog, so a closed or
//! reloaded window loses nothing: following a run reads the catalog, history first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use peft_studio_app::catalog::series::{SeriesOptions, XAxis};
use peft_studio_app::catalog::{AdapterRecord, Catalog, MetricRow, Run, RunFilter};
use peft_studio_app::compare::{compare, Comparison};
use peft_studio_app::launch::{attach_child, create_run, requeue, reserve_out_dir, spawn_worker};
use peft_studio_engine::data::format::Format;
use peft_studio_engine::data::load::DataConfig;
use peft_studio_engine::library::{resolve, studio_home};
use peft_studio_engine::peft::MethodConfig;
use peft_studio_engine::run::RunConfig;
use peft_studio_engine::train::TrainConfig;
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::State;

use super::open_catalog;
use crate::error::{blocking, CommandError, CommandResult};

/// What the New run form sends.
#[derive(Debug, Deserialize)]
pub struct RunRequest {
    /// A name for the run list (default: method and model).
    pub name: Option<String>,
    /// An installed model's name, or a model folder.
    pub model: String,
    /// The training data file.
    pub dataset: PathBuf,
    /// The method and its settings.
    pub method: MethodConfig,
    /// Optimiser and batching.
    pub train: TrainConfig,
    /// The record format (detected per record when absent).
    pub format: Option<Format>,
}

/// Starts a worker for a queued run; a thread waits for it so that a crash is recorded at
/// once with its signal (the catalog's liveness check would find it later anyway).
fn launch(catalog: &Catalog, id: i64) -> CommandResult<()> {
    let exe = std::env::current_exe().map_err(|e| CommandError {
        message: format!("cannot find this program to start the worker: {e}"),
        hint: None,
    })?;
    let child = spawn_worker(&exe, catalog.path(), id, false)?;
    let path = catalog.path().to_path_buf();
    std::thread::spawn(move || {
        if let Ok(catalog) = Catalog::open(&path) {
            let _ = attach_child(child, &catalog, id, &mut |_| {}, &AtomicBool::new(false));
        }
    });
    Ok(())
}

/// Records a run and starts training it; returns its id.
#[tauri::command]
pub async fn start_run(
    request: RunRequest,
    chosen: State<'_, crate::paths::Chosen>,
) -> CommandResult<i64> {
    // The page's path is checked before anything else is looked up or opened.
    let dataset = crate::paths::read_source(&request.dataset, crate::paths::DATASET, &chosen)?;
    blocking(move || {
        let catalog = open_catalog()?;
        let cfg = RunConfig {
            model: resolve(&studio_home(), Path::new(&request.model))?,
            dataset,
            out: reserve_out_dir(request.method.kind.as_str())?,
            method: request.method,
            train: request.train,
            data: DataConfig {
                format: request.format.unwrap_or_default(),
                ..DataConfig::default()
            },
        };
        let id = create_run(&catalog, &cfg, request.name.as_deref()).inspect_err(|_| {
            // A refused run leaves no empty folder behind (remove_dir keeps a non-empty one).
            let _ = std::fs::remove_dir(&cfg.out);
        })?;
        launch(&catalog, id)?;
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

/// One run with what it produced.
#[derive(Debug, Serialize)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Its checkpoints, oldest first, as (step, folder).
    pub checkpoints: Vec<(i64, String)>,
    /// Adapters it exported.
    pub adapters: Vec<AdapterRecord>,
}

/// A run, its checkpoints and adapters.
#[tauri::command]
pub async fn get_run(id: i64) -> CommandResult<RunDetail> {
    blocking(move || {
        let catalog = open_catalog()?;
        Ok(RunDetail {
            run: catalog.run(id)?,
            checkpoints: catalog.checkpoints(id)?,
            adapters: catalog.adapters(Some(id))?,
        })
    })
    .await
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
        launch(&catalog, id)
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
        let path = Path::new(&run.out_dir).join("events.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(CommandError {
                    message: format!("{}: {e}", path.display()),
                    hint: None,
                })
            }
        };
        let mut events: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] != "step")
            .collect();
        let keep = limit.unwrap_or(50);
        Ok(events.split_off(events.len().saturating_sub(keep)))
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
        let checkpoint = latest_checkpoint(Path::new(&run.out_dir))?;
        export_checkpoint(&checkpoint, format, &dest)?;
        if format == ExportFormat::Peft {
            let cfg: RunConfig = serde_json::from_value(run.config).map_err(|e| CommandError {
                message: format!("run {id}: stored config is unreadable: {e}"),
                hint: None,
            })?;
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
