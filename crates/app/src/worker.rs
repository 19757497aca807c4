//! The worker: the process that trains one run. It waits for its turn on the device, trains
//! (resuming from the run's newest checkpoint when there is one), writes its own metrics and
//! heartbeat to the catalog, and prints every event as a JSON line for an attached parent.
//! A parent that goes away does not stop it.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peft_studio_catalog::{Catalog, MetricRow, RunStatus};
use peft_studio_engine::run_folder::events::train_events;
use peft_studio_engine::train::{checkpoint, TrainEvent, TrainSink};
use peft_studio_engine::EngineError;
use peft_studio_engine::{handoff, run};
use serde_json::json;

use crate::error::{AppError, Result};
use crate::export::record_adapter;

/// How often buffered metrics are written: often enough for a live view (< 200 ms behind),
/// rarely enough that a fast run does not write a transaction per step.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often the worker proves it is alive and checks for a stop request.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How often a queued worker checks whether its turn has come.
const QUEUE_POLL: Duration = Duration::from_millis(300);

/// Prints one JSON line for the parent, ignoring a parent that has gone away.
fn emit(line: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Trains run `run_id` of the catalog at `catalog_path`. `cancel` is set by a signal handler
/// (Ctrl-C) or by a stop request seen in the catalog. Returns how the run ended (a training
/// error is recorded in the catalog as the failure's reason, not returned); an error means the
/// run could not be worked on at all.
pub fn run_worker(catalog_path: &Path, run_id: i64, cancel: Arc<AtomicBool>) -> Result<RunStatus> {
    crate::allocator::keep_freed_memory();
    let catalog = Catalog::open(catalog_path)?;
    let run = catalog.run(run_id)?;
    if run.status != RunStatus::Queued {
        return Err(AppError::Invalid(format!(
            "run {run_id} is {}, not queued; `resume {run_id}` queues a stopped run",
            run.status.as_str()
        )));
    }
    let pid = std::process::id();
    catalog.set_pid(run_id, pid)?;
    emit(&json!({"event": "worker", "run": run_id, "pid": pid}));
    if !wait_for_turn(&catalog, run_id, pid)? {
        return Ok(catalog.run(run_id)?.status);
    }
    let result = train_claimed(&catalog, catalog_path, &run, cancel);
    let (status, error) = match &result {
        Ok(()) => (RunStatus::Completed, None),
        Err(AppError::Engine(EngineError::Cancelled)) => (RunStatus::Cancelled, None),
        Err(e) => (RunStatus::Failed, Some(e.to_string())),
    };
    catalog.finish(run_id, status, error.as_deref())?;
    emit(&json!({"event": "status", "status": status.as_str(), "error": error}));
    Ok(status)
}

/// Waits until the run may use its device; `false` when it was cancelled while queued.
fn wait_for_turn(catalog: &Catalog, run_id: i64, pid: u32) -> Result<bool> {
    let mut said = false;
    let mut last_beat = Instant::now();
    loop {
        catalog.reap_dead()?;
        if catalog.claim(run_id, pid)? {
            return Ok(true);
        }
        if catalog.run(run_id)?.status != RunStatus::Queued {
            return Ok(false);
        }
        if !said {
            emit(&json!({"event": "queued", "reason": "another run is training on this device"}));
            said = true;
        }
        if last_beat.elapsed() >= HEARTBEAT_EVERY {
            catalog.heartbeat(run_id, None)?;
            last_beat = Instant::now();
        }
        std::thread::sleep(QUEUE_POLL);
    }
}

fn train_claimed(
    catalog: &Catalog,
    catalog_path: &Path,
    run: &peft_studio_catalog::Run,
    cancel: Arc<AtomicBool>,
) -> Result<()> {
    let run_id = run.id;
    let cfg = crate::runs::stored_config(run)?;
    // Continue from the newest complete checkpoint (the job's own, for a hand-off); the steps
    // after it are trained again, so their old metrics go.
    let resume_from = match cfg.target.is_local() {
        true => checkpoint::list(&cfg.checkpoints_dir())
            .last()
            .map(|(s, _)| *s as i64),
        false => handoff::latest_checkpoint(&cfg).map(|s| s as i64),
    };
    let kept_until = resume_from.unwrap_or(-1);
    let wall_offset = catalog
        .metrics(run_id, kept_until - 1)?
        .first()
        .filter(|r| r.step == kept_until)
        .and_then(|r| r.wall_s)
        .unwrap_or(0.0);
    catalog.truncate_metrics_after(run_id, kept_until)?;
    backfill_metrics(catalog, run_id, &cfg.out, kept_until)?;

    let (tx, rx) = mpsc::channel();
    let recorder = {
        let (path, cancel, ckpt_dir) = (
            catalog_path.to_path_buf(),
            cancel.clone(),
            cfg.checkpoints_dir(),
        );
        std::thread::spawn(move || record(&path, run_id, rx, &cancel, wall_offset, &ckpt_dir))
    };
    let mut sink = WorkerSink { tx };
    let train = match cfg.target.is_local() {
        true => run::train,
        false => handoff::train,
    };
    let trained = train(&cfg, resume_from.is_some(), &mut sink, &cancel);
    drop(sink);
    let recorded = recorder
        .join()
        .map_err(|_| AppError::Invalid("the metrics recorder thread crashed".into()))?;
    let adapter = trained?;
    recorded?;
    record_adapter(catalog, run_id, &cfg, &adapter)?;
    Ok(())
}

/// Passes events to the recorder thread and to the parent.
struct WorkerSink {
    tx: mpsc::Sender<TrainEvent>,
}

impl TrainSink for WorkerSink {
    fn event(&mut self, event: &TrainEvent) {
        if let Ok(v) = serde_json::to_value(event) {
            emit(&v);
        }
        let _ = self.tx.send(event.clone());
    }
}

/// Writes the rows for steps up to `until` that the run's event log has and the catalog lacks.
/// Metrics reach the catalog every 100 ms, and a worker killed between writing a checkpoint and
/// that flush would lose the steps before the checkpoint for good (the resumed run starts after
/// it); the event log has every event, written as it happened. Their wall-clock times are left
/// out: the old run's clock cannot be recovered.
fn backfill_metrics(catalog: &Catalog, run_id: i64, run_dir: &Path, until: i64) -> Result<()> {
    // An unreadable log backfills nothing: the catalog's rows stand as they are.
    let Ok(events) = train_events(run_dir) else {
        return Ok(());
    };
    // (step, is an evaluation) of every value the catalog already has.
    let have: std::collections::HashSet<(i64, bool)> = catalog
        .metrics(run_id, -1)?
        .iter()
        .flat_map(|r| {
            [
                (r.step, false, r.loss.is_some()),
                (r.step, true, r.eval_loss.is_some()),
            ]
        })
        .filter(|(_, _, present)| *present)
        .map(|(step, eval, _)| (step, eval))
        .collect();
    let mut missing: std::collections::BTreeMap<(i64, bool), MetricRow> = Default::default();
    for event in events {
        let eval = matches!(event, TrainEvent::Eval { .. });
        if let Some(row) = metric_of(&event, 0.0) {
            if row.step <= until && !have.contains(&(row.step, eval)) {
                // Later lines win: a step trained again after a resume is the same step.
                missing.insert(
                    (row.step, eval),
                    MetricRow {
                        wall_s: None,
                        ..row
                    },
                );
            }
        }
    }
    let rows: Vec<MetricRow> = missing.into_values().collect();
    Ok(catalog.write_metrics(run_id, &rows)?)
}

/// The catalog row an event adds to, if any.
fn metric_of(event: &TrainEvent, wall_offset: f64) -> Option<MetricRow> {
    match event {
        TrainEvent::Step(m) => Some(MetricRow {
            step: m.step as i64,
            epoch: Some(m.epoch as i64),
            tokens_seen: Some(m.tokens_seen as i64),
            wall_s: Some(wall_offset + m.elapsed_s),
            loss: Some(m.loss),
            eval_loss: None,
            lr: Some(m.lr),
            grad_norm: Some(m.grad_norm),
            tokens_per_s: Some(m.tokens_per_s),
        }),
        TrainEvent::Eval { step, eval_loss } => Some(MetricRow {
            step: *step as i64,
            eval_loss: Some(*eval_loss),
            ..MetricRow::default()
        }),
        _ => None,
    }
}

/// The recorder thread: writes metrics in batches, beats, and turns a stop request in the
/// catalog into the cancel flag. A failed write (a full disk) keeps the rows for the next try.
fn record(
    catalog_path: &Path,
    run_id: i64,
    rx: Receiver<TrainEvent>,
    cancel: &AtomicBool,
    wall_offset: f64,
    checkpoints: &Path,
) -> Result<()> {
    let catalog = Catalog::open(catalog_path)?;
    let mut pending: Vec<MetricRow> = Vec::new();
    let mut checkpoints_changed = false;
    let (mut last_flush, mut last_beat) = (Instant::now(), Instant::now());
    let mut last_error: Option<AppError> = None;
    loop {
        let done = match rx.recv_timeout(FLUSH_EVERY) {
            Ok(event) => {
                match &event {
                    TrainEvent::Started { total_steps, .. } => {
                        if let Err(e) = catalog.set_total_steps(run_id, *total_steps as u64) {
                            eprintln!(
                                "warning: could not record the step count of run {run_id}: {e}"
                            );
                        }
                    }
                    TrainEvent::Checkpoint { .. } => checkpoints_changed = true,
                    TrainEvent::Evaluated { .. } => {
                        if let Err(e) = record_evaluation(&catalog, run_id, &event) {
                            eprintln!(
                                "warning: could not record the evaluation of run {run_id}: {e}"
                            );
                        }
                    }
                    _ => {}
                }
                pending.extend(metric_of(&event, wall_offset));
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if done || last_flush.elapsed() >= FLUSH_EVERY {
            last_flush = Instant::now();
            match flush(&catalog, run_id, &pending, checkpoints_changed, checkpoints) {
                Ok(()) => {
                    pending.clear();
                    checkpoints_changed = false;
                    last_error = None;
                }
                Err(e) => {
                    eprintln!("warning: could not record metrics of run {run_id} yet: {e}");
                    last_error = Some(e);
                }
            }
        }
        if last_beat.elapsed() >= HEARTBEAT_EVERY {
            last_beat = Instant::now();
            let peak = peft_studio_engine::sysinfo::peak_rss_bytes();
            if catalog.heartbeat(run_id, peak).unwrap_or(false) {
                cancel.store(true, Ordering::Relaxed);
            }
        }
        if done {
            let peak = peft_studio_engine::sysinfo::peak_rss_bytes();
            let _ = catalog.heartbeat(run_id, peak);
            return last_error.map_or(Ok(()), Err);
        }
    }
}

/// Keeps the `[eval]` result against the run, with the adapter it measured.
fn record_evaluation(catalog: &Catalog, run_id: i64, event: &TrainEvent) -> Result<()> {
    let TrainEvent::Evaluated {
        adapter,
        task,
        dataset,
        items,
        metrics,
    } = event
    else {
        return Ok(());
    };
    let run = catalog.run(run_id)?;
    catalog.add_evaluation(&peft_studio_catalog::NewEvaluation {
        run_id: Some(run_id),
        model: run.model_path.unwrap_or_default(),
        adapter: Some(adapter.clone()),
        task: task.clone(),
        dataset: dataset.clone(),
        dataset_sha256: peft_studio_engine::hash::sha256_file(Path::new(dataset))?.0,
        items: *items,
        metrics: metrics.clone(),
    })?;
    Ok(())
}

fn flush(
    catalog: &Catalog,
    run_id: i64,
    rows: &[MetricRow],
    checkpoints_changed: bool,
    checkpoints: &Path,
) -> Result<()> {
    catalog.write_metrics(run_id, rows)?;
    if checkpoints_changed {
        let list: Vec<(i64, String)> = checkpoint::list(checkpoints)
            .into_iter()
            .map(|(s, p)| (s as i64, p.display().to_string()))
            .collect();
        catalog.set_checkpoints(run_id, &list)?;
    }
    Ok(())
}

/// The worker entry point of both front ends: when this program was started as a worker
/// (`worker --catalog FILE --run ID`, see `launch::worker_args`) it trains the run and returns the
/// exit code (0 when the run completed; how it ended, and why, is in the catalog and in the
/// last JSON line); `None` otherwise. Ctrl-C asks the run to stop after a checkpoint.
pub fn main_if_worker() -> Option<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (catalog, run_id) = match crate::launch::parse_worker_args(&args)? {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            return Some(2);
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    Some(match run_worker(&catalog, run_id, cancel) {
        Ok(RunStatus::Completed) => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("run {run_id}: {e}");
            1
        }
    })
}
