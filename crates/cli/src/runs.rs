//! Runs through the catalog: `train` and `resume` (a worker process per run, followed live),
//! `runs …` and `compare`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use peft_studio_app::catalog::series::SeriesOptions;
use peft_studio_app::catalog::{Catalog, Run, RunFilter, RunStatus};
use peft_studio_app::chart::{render, ChartOptions};
use peft_studio_app::compare::{compare as compare_runs, Comparison};
use peft_studio_app::launch::{attach_child, requeue, start_worker};
use peft_studio_app::runs::{TrainEvent, TrainSink};
use peft_studio_app::{AppError, EngineError, Result};

use crate::args::{CompareArgs, OutputArgs, RunsCommand};
use crate::progress::Bar;

/// Opens the catalog and marks runs whose worker died as failed.
pub fn open(path: &Path) -> Result<Catalog> {
    let catalog = Catalog::open(path)?;
    for (id, reason) in catalog.reap_dead()? {
        eprintln!("run {id} failed: {reason}");
    }
    Ok(catalog)
}

/// A run named by id, or by its folder.
pub fn find_run(catalog: &Catalog, key: &str) -> Result<Run> {
    if let Ok(id) = key.parse::<i64>() {
        return Ok(catalog.run(id)?);
    }
    let dir = std::fs::canonicalize(key).map_err(|e| {
        AppError::Invalid(format!("run `{key}` is neither a run id nor a folder: {e}"))
    })?;
    catalog
        .runs(&RunFilter::default())?
        .into_iter()
        .find(|r| Path::new(&r.out_dir) == dir)
        .ok_or_else(|| {
            AppError::Invalid(format!(
                "no run in the catalog has the folder {}",
                dir.display()
            ))
        })
}

/// Ctrl-C asks the run to stop after its current step (the worker checkpoints first).
fn cancel_on_ctrl_c() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    cancel
}

/// Queues a stopped run again and trains it from its newest checkpoint (to `max_steps` in
/// all, when given).
pub fn resume(
    catalog_path: &Path,
    key: &str,
    max_steps: Option<usize>,
    detach: bool,
    output: &OutputArgs,
) -> Result<()> {
    let catalog = open(catalog_path)?;
    let id = find_run(&catalog, key)?.id;
    requeue(&catalog, id, max_steps)?;
    start(&catalog, id, detach, output)
}

/// Trains queued run `id` in a worker, following it unless `detach`.
pub fn start(catalog: &Catalog, id: i64, detach: bool, output: &OutputArgs) -> Result<()> {
    let out_dir = catalog.run(id)?.out_dir;
    let child = start_worker(catalog.path(), id, detach)?;
    if detach {
        eprintln!("run {id} started in the background (worker process {}); follow it with `peft-studio-cli runs watch {id}`", child.id());
        println!("{id}");
        return Ok(());
    }
    if !output.json {
        eprintln!("run {id}: {out_dir}");
    }
    let cancel = cancel_on_ctrl_c();
    let mut bar = Bar::default();
    let mut on_line = |line: &str| {
        if output.json {
            println!("{line}");
        } else if let Ok(event) = serde_json::from_str::<TrainEvent>(line) {
            bar.event(&event);
        } else if line.contains("\"queued\"") {
            eprintln!("run {id} is queued behind another run on this device");
        }
    };
    let run = attach_child(child, catalog, id, &mut on_line, &cancel)?;
    report_end(&run)
}

/// Says how a followed run ended; anything but completion is an error exit.
fn report_end(run: &Run) -> Result<()> {
    let id = run.id;
    match run.status {
        RunStatus::Completed => {
            eprintln!(
                "run {id} completed; adapter in {}",
                peft_studio_app::runs::adapter_dir(Path::new(&run.out_dir)).display()
            );
            Ok(())
        }
        RunStatus::Cancelled => {
            eprintln!("run {id} stopped after a checkpoint; continue it with `peft-studio-cli resume {id}`");
            Err(EngineError::Cancelled.into())
        }
        status => Err(AppError::Invalid(format!(
            "run {id} {}: {}",
            status.as_str(),
            run.error.as_deref().unwrap_or("no reason recorded")
        ))),
    }
}

fn parse_status(s: &str) -> Result<RunStatus> {
    [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ]
    .into_iter()
    .find(|st| st.as_str() == s)
    .ok_or_else(|| {
        AppError::Invalid(format!(
            "status `{s}` is not one of queued, running, completed, failed, cancelled"
        ))
    })
}

fn json_line<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| AppError::Invalid(format!("cannot print as JSON: {e}")))
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

fn age(t: f64) -> String {
    let s = (peft_studio_app::catalog::now() - t).max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `runs …`.
pub fn runs(catalog_path: &Path, cmd: RunsCommand) -> Result<()> {
    let catalog = open(catalog_path)?;
    match cmd {
        RunsCommand::List { json, status, tag } => {
            let filter = RunFilter {
                statuses: status
                    .as_deref()
                    .map(parse_status)
                    .transpose()?
                    .into_iter()
                    .collect(),
                tag,
            };
            let runs = catalog.runs(&filter)?;
            if json {
                for r in &runs {
                    println!("{}", json_line(r)?);
                }
                return Ok(());
            }
            println!(
                "{:>4}  {:<10} {:<28} {:>11}  {:>8}  {:>8}  {:<9} TAGS",
                "ID", "STATUS", "NAME", "STEP", "LOSS", "EVAL", "CREATED"
            );
            for r in &runs {
                let step = format!(
                    "{}/{}",
                    r.last_step.unwrap_or(0),
                    r.total_steps.map_or("?".into(), |t| t.to_string())
                );
                let name: String = r.name.chars().take(28).collect();
                println!(
                    "{:>4}  {:<10} {:<28} {:>11}  {:>8}  {:>8}  {:<9} {}",
                    r.id,
                    r.status.as_str(),
                    name,
                    step,
                    fmt_opt(r.last_loss),
                    fmt_opt(r.best_eval_loss),
                    age(r.created_at),
                    r.tags.join(",")
                );
            }
            Ok(())
        }
        RunsCommand::Show { run, json } => show(&catalog, &find_run(&catalog, &run)?, json),
        RunsCommand::Tag { run, tags } => {
            let id = find_run(&catalog, &run)?.id;
            tags.iter().try_for_each(|t| catalog.tag(id, t))?;
            Ok(())
        }
        RunsCommand::Untag { run, tags } => {
            let id = find_run(&catalog, &run)?.id;
            tags.iter().try_for_each(|t| catalog.untag(id, t))?;
            Ok(())
        }
        RunsCommand::Note { run, text } => {
            Ok(catalog.add_note(find_run(&catalog, &run)?.id, &text)?)
        }
        RunsCommand::Cancel { run } => {
            let id = find_run(&catalog, &run)?.id;
            let status = catalog.request_cancel(id)?;
            match status {
                RunStatus::Running => eprintln!("run {id} will stop after its current step"),
                other => eprintln!("run {id} is {}", other.as_str()),
            }
            Ok(())
        }
        RunsCommand::Delete { run, keep_files } => {
            let id = find_run(&catalog, &run)?.id;
            let deleted = catalog.delete_run(id)?;
            let dir = PathBuf::from(&deleted.out_dir);
            // Only a folder that is a run's (it holds run.toml) is removed.
            if !keep_files && dir.join("run.toml").is_file() {
                std::fs::remove_dir_all(&dir).map_err(|e| AppError::Io {
                    path: dir.clone(),
                    source: e,
                })?;
                eprintln!("deleted run {id} and {}", dir.display());
            } else {
                eprintln!(
                    "deleted run {id} from the catalog; its files stay in {}",
                    dir.display()
                );
            }
            Ok(())
        }
        RunsCommand::Watch { run, json } => watch(&catalog, find_run(&catalog, &run)?.id, json),
    }
}

fn show(catalog: &Catalog, run: &Run, json: bool) -> Result<()> {
    let checkpoints = catalog.checkpoints(run.id)?;
    let adapters = catalog.adapters(Some(run.id))?;
    let notes = catalog.notes(run.id)?;
    if json {
        let v = serde_json::json!({"run": run, "checkpoints": checkpoints, "adapters": adapters, "notes": notes});
        println!("{}", json_line(&v)?);
        return Ok(());
    }
    println!("run {}: {}", run.id, run.name);
    println!("  status      {}", run.status.as_str());
    if let Some(e) = &run.error {
        println!("  error       {e}");
    }
    println!("  model       {}", run.model_path.as_deref().unwrap_or("-"));
    println!(
        "  dataset     {} (sha256 {})",
        run.dataset_path.as_deref().unwrap_or("-"),
        run.dataset_sha256
            .as_deref()
            .map_or("-", |h| &h[..12.min(h.len())])
    );
    println!("  method      {}", run.method);
    println!("  device      {}", run.device);
    println!("  folder      {}", run.out_dir);
    println!(
        "  progress    step {} of {}",
        run.last_step.unwrap_or(0),
        run.total_steps.map_or("?".into(), |t| t.to_string())
    );
    println!(
        "  loss        {} (best eval {})",
        fmt_opt(run.last_loss),
        fmt_opt(run.best_eval_loss)
    );
    if let Some(b) = run.peak_memory_bytes {
        println!("  peak memory {:.0} MB", b as f64 / 1e6);
    }
    if !run.tags.is_empty() {
        println!("  tags        {}", run.tags.join(", "));
    }
    for (step, path) in &checkpoints {
        println!("  checkpoint  step {step}: {path}");
    }
    for a in &adapters {
        println!(
            "  adapter     {} ({} bytes, sha256 {})",
            a.path,
            a.size_bytes,
            &a.sha256[..12.min(a.sha256.len())]
        );
    }
    for (t, body) in &notes {
        println!("  note        {} {body}", age(*t));
    }
    Ok(())
}

fn watch(catalog: &Catalog, id: i64, json: bool) -> Result<()> {
    let stop = cancel_on_ctrl_c();
    let total = catalog.run(id)?.total_steps.unwrap_or(0).max(0) as u64;
    let bar = indicatif::ProgressBar::new(total);
    let mut on_rows = |rows: &[peft_studio_app::catalog::MetricRow]| {
        for r in rows {
            if json {
                if let Ok(line) = json_line(r) {
                    println!("{line}");
                }
                continue;
            }
            if let Ok(run) = catalog.run(id) {
                bar.set_length(run.total_steps.unwrap_or(0).max(0) as u64);
            }
            bar.set_position(r.step.max(0) as u64);
            bar.set_message(format!("loss {}", fmt_opt(r.loss)));
            if let Some(e) = r.eval_loss {
                bar.println(format!("step {}: eval loss {e:.4}", r.step));
            }
        }
    };
    let run = peft_studio_app::follow::follow(catalog, id, &mut on_rows, &stop)?;
    bar.finish_and_clear();
    if stop.load(Ordering::Relaxed) {
        eprintln!("stopped watching; run {id} is {}", run.status.as_str());
        return Ok(());
    }
    report_end(&run)
}

/// An evaluation's figures on one line (the token count left out: it is not a score).
pub fn figures(metrics: &std::collections::BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .filter(|(k, _)| k.as_str() != "tokens")
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// `compare`.
pub fn compare(catalog_path: &Path, a: &CompareArgs) -> Result<()> {
    let catalog = open(catalog_path)?;
    let runs: Vec<Run> = a
        .runs
        .iter()
        .map(|k| find_run(&catalog, k))
        .collect::<Result<_>>()?;
    let opts = SeriesOptions {
        x: a.x.parse()?,
        max_points: a.points,
        smoothing: a.smoothing,
    };
    let Comparison {
        runs,
        series,
        config_diff: diff,
        evaluations,
    } = compare_runs(&catalog, runs, &opts)?;
    if a.json {
        println!(
            "{}",
            json_line(
                &serde_json::json!({"series": series, "config_diff": diff, "evaluations": evaluations})
            )?
        );
    } else {
        println!(
            "{:>4}  {:<28} {:<10} {:>8}  {:>8}  {:>9}",
            "ID", "NAME", "STATUS", "LOSS", "EVAL", "STEPS"
        );
        for r in &runs {
            let name: String = r.name.chars().take(28).collect();
            println!(
                "{:>4}  {:<28} {:<10} {:>8}  {:>8}  {:>9}",
                r.id,
                name,
                r.status.as_str(),
                fmt_opt(r.last_loss),
                fmt_opt(r.best_eval_loss),
                r.last_step.unwrap_or(0)
            );
        }
        if diff.is_empty() {
            println!("\nthe configs are identical");
        } else {
            println!("\nconfig fields that differ:");
            for (field, values) in &diff {
                let vals: Vec<String> = values
                    .iter()
                    .map(|v| v.as_ref().map_or("-".into(), |v| v.to_string()))
                    .collect();
                println!("  {field}: {}", vals.join(" | "));
            }
        }
        if !evaluations.is_empty() {
            println!("\nevaluations (`eval`):");
            for e in evaluations.iter().map(|e| &e.fields) {
                println!(
                    "  run {:>3}  {:<10} {}  on {}",
                    e.run_id.unwrap_or(0),
                    e.task,
                    figures(&e.metrics),
                    e.dataset
                );
            }
        }
    }
    if let Some(out) = &a.out {
        let (width, height) = a
            .size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .filter(|&(w, h): &(u32, u32)| (200..=8000).contains(&w) && (200..=8000).contains(&h))
            .ok_or_else(|| {
                AppError::Invalid(format!(
                    "--size `{}` is not WIDTHxHEIGHT (200 to 8000 pixels each)",
                    a.size
                ))
            })?;
        let chart = ChartOptions {
            width,
            height,
            log_y: a.log_y,
            x: opts.x,
            ..Default::default()
        };
        render(&series, &chart, out)?;
        eprintln!("chart written to {}", out.display());
    }
    Ok(())
}
