//! Starting runs: recording a run in the catalog, starting its worker process, and attaching
//! to the worker's event stream (a Ctrl-C or a Stop button becomes a stop request in the
//! catalog; a worker that dies is marked failed with the reason).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use peft_studio_catalog::{Catalog, NewRun, Run, RunStatus};
use peft_studio_engine::run::RunConfig;
use peft_studio_engine::train::checkpoint;
use peft_studio_engine::EngineError;

use crate::error::{AppError, Result};
use crate::worker::worker_args;

/// An absolute form of a path that must exist, or an error naming it and its role.
fn existing(path: &Path, role: &str) -> Result<PathBuf> {
    std::fs::canonicalize(path)
        .map_err(|e| AppError::Invalid(format!("{role} {}: {e}", path.display())))
}

/// The `architectures[0]` of a model folder's config.json, if readable.
fn architecture(model: &Path) -> Option<String> {
    let text = std::fs::read_to_string(model.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("architectures")?.get(0)?.as_str().map(str::to_string)
}

/// The name of the device runs train on in this build.
pub fn device_name() -> String {
    peft_studio_engine::device::device_name(&peft_studio_engine::run::default_device())
}

/// Records a new queued run: paths made absolute (the worker and later resumes may run
/// elsewhere), the dataset hashed, nothing overwritten. Returns the run id.
pub fn create_run(catalog: &Catalog, cfg: &RunConfig, name: Option<&str>) -> Result<i64> {
    peft_studio_engine::run::preflight(cfg)?;
    peft_studio_engine::device::check_device()?;
    let mut cfg = cfg.clone();
    cfg.model = existing(&cfg.model, "model")?;
    cfg.dataset = existing(&cfg.dataset, "dataset")?;
    if let Some(v) = cfg.data.val_dataset.as_mut() {
        *v = existing(v, "validation dataset")?;
    }
    if cfg.out.is_relative() {
        let cwd = std::env::current_dir().map_err(|e| AppError::io(".", e))?;
        // Joined and rid of `.` parts, so that the folder reads as the user would write it.
        cfg.out = cwd.join(&cfg.out).components().collect();
    }
    if checkpoint::list(&cfg.checkpoints_dir()).last().is_some() {
        return Err(EngineError::bad_file(
            &cfg.out,
            "already holds a run with checkpoints; resume it or choose another folder",
        )
        .into());
    }
    let (dataset_sha256, dataset_bytes) = peft_studio_engine::hash::sha256_file(&cfg.dataset)?;
    let model_name = cfg.model.file_name().map_or_else(
        || cfg.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let method = cfg.method.kind.to_string();
    let config = serde_json::to_value(&cfg)
        .map_err(|e| AppError::Invalid(format!("run config cannot be stored: {e}")))?;
    Ok(catalog.add_run(&NewRun {
        name: name.map_or_else(|| format!("{method} {model_name}"), str::to_string),
        architecture: architecture(&cfg.model),
        model_name,
        model_path: cfg.model.display().to_string(),
        dataset_path: cfg.dataset.display().to_string(),
        dataset_sha256,
        dataset_bytes,
        method,
        config,
        out_dir: cfg.out.display().to_string(),
        device: device_name(),
    })?)
}

/// Starts `program worker --catalog … --run …`, the worker of a queued run: with its events
/// on a pipe to follow with [`attach_child`], or `detached` with its output discarded (it
/// records everything in the catalog and outlives the caller either way).
pub fn spawn_worker(
    program: &Path,
    catalog_path: &Path,
    run_id: i64,
    detached: bool,
) -> Result<Child> {
    let (out, err) = if detached {
        (Stdio::null(), Stdio::null())
    } else {
        (Stdio::piped(), Stdio::inherit())
    };
    Command::new(program)
        .args(worker_args(catalog_path, run_id))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| AppError::io(program, e))
}

/// Words for how a process ended, for the failure reason.
fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                9 => " (SIGKILL: the out-of-memory killer sends this)",
                6 => " (SIGABRT: an abort, e.g. a failed allocation)",
                11 => " (SIGSEGV: a crash)",
                15 => " (SIGTERM)",
                _ => "",
            };
            return format!("the worker was killed by signal {sig}{name}");
        }
    }
    format!("the worker exited with {status} before finishing the run")
}

/// Follows a worker started by [`spawn_worker`]: each line it prints goes to `on_line` as it
/// comes. When `cancel` is set, the run is asked to stop (it checkpoints first). Returns the
/// run as the catalog has it once the worker has exited.
pub fn attach_child(
    mut child: Child,
    catalog: &Catalog,
    run_id: i64,
    on_line: &mut dyn FnMut(&str),
    cancel: &AtomicBool,
) -> Result<Run> {
    let (tx, rx) = mpsc::channel::<String>();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut asked = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => on_line(&line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if cancel.load(Ordering::Relaxed) && !asked {
            catalog.request_cancel(run_id)?;
            asked = true;
        }
    }
    let status = child.wait().map_err(|e| AppError::io("worker", e))?;
    if catalog.run(run_id)?.status.is_live() {
        let reason = format!(
            "{}; its last checkpoint can be resumed (`resume {run_id}`)",
            describe_exit(status)
        );
        catalog.finish(run_id, RunStatus::Failed, Some(&reason))?;
    }
    Ok(catalog.run(run_id)?)
}

/// Puts a stopped run back in the queue; its worker continues from the newest checkpoint,
/// to `max_steps` steps in all when given (training a finished run further).
pub fn requeue(catalog: &Catalog, run_id: i64, max_steps: Option<usize>) -> Result<()> {
    catalog.reap_dead()?;
    let run = catalog.run(run_id)?;
    if let Some(steps) = max_steps {
        let mut cfg: RunConfig = serde_json::from_value(run.config).map_err(|e| {
            AppError::Invalid(format!("run {run_id}: stored config is unreadable: {e}"))
        })?;
        cfg.train.max_steps = Some(steps);
        cfg.train.validate()?;
        let value = serde_json::to_value(&cfg)
            .map_err(|e| AppError::Invalid(format!("run config cannot be stored: {e}")))?;
        catalog.set_config(run_id, &value)?;
    }
    Ok(catalog.requeue(run_id)?)
}

/// `YYYYMMDD-HHMMSS` in UTC for Unix time `secs` (run folder names sort by time).
pub fn utc_stamp(secs: i64) -> String {
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A fresh run folder under the studio's data folder, `runs/<UTC time>-<method>` (`-2`, `-3`…
/// added when runs start within the same second), created so that the next call picks another.
pub fn reserve_out_dir(method: &str) -> peft_studio_engine::Result<PathBuf> {
    let dir = free_out_dir(method);
    std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
    Ok(dir)
}

fn free_out_dir(method: &str) -> PathBuf {
    let stamp = utc_stamp(peft_studio_catalog::now() as i64);
    let runs = peft_studio_engine::library::studio_home().join("runs");
    let first = runs.join(format!("{stamp}-{method}"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|n| runs.join(format!("{stamp}-{method}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}
