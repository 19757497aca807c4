//! Starting runs: recording a run in the catalog, starting its worker process, and attaching
//! to the worker's event stream (a Ctrl-C or a Stop button becomes a stop request in the
//! catalog; a worker that dies is marked failed with the reason).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use serde::Deserialize;

use peft_studio_catalog::{Catalog, NewRun, Run, RunStatus};
use peft_studio_engine::train::checkpoint;
use peft_studio_engine::EngineError;

use crate::error::{AppError, Result};
use crate::models::resolve_model;
use crate::runs::{stored_config, DataConfig, Format, MethodConfig, RunConfig, TrainConfig};

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
    peft_studio_engine::device::device_name(&peft_studio_engine::device::default_device())
}

/// Records a new queued run: paths made absolute (the worker and later resumes may run
/// elsewhere), the dataset hashed, nothing overwritten. Returns the run id.
pub fn create_run(catalog: &Catalog, cfg: &RunConfig, name: Option<&str>) -> Result<i64> {
    peft_studio_engine::run::preflight(cfg)?;
    if cfg.target.is_local() {
        peft_studio_engine::device::check_device()?;
    } else {
        peft_studio_engine::handoff::check(cfg)?;
    }
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
        // Runs queue per device; a hand-off's device is its target.
        device: match cfg.target.is_local() {
            true => device_name(),
            false => cfg.target.describe(),
        },
    })?)
}

/// The scripts a hand-off's bundle starts its job with: by hand, and on a Slurm node.
pub use peft_studio_engine::handoff::bundle::{LAUNCH_SCRIPT, SBATCH_SCRIPT};

/// Writes a hand-off's bundle alone, not recorded as a run (to take to a machine the studio
/// does not reach); returns its folder.
pub fn write_bundle(cfg: &RunConfig) -> Result<PathBuf> {
    Ok(peft_studio_engine::handoff::write_bundle(cfg)?)
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

/// Starts the worker of a queued run as this program in worker mode (see [`spawn_worker`]).
pub fn start_worker(catalog_path: &Path, run_id: i64, detached: bool) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| {
        AppError::Invalid(format!("cannot find this program to start the worker: {e}"))
    })?;
    spawn_worker(&exe, catalog_path, run_id, detached)
}

/// Starts the worker of a queued run and returns at once; a thread waits for it, so that a
/// crash is recorded with its signal as soon as it happens (the catalog's liveness check
/// would find it later anyway).
pub fn start_in_background(catalog_path: &Path, run_id: i64) -> Result<()> {
    let child = start_worker(catalog_path, run_id, false)?;
    let path = catalog_path.to_path_buf();
    std::thread::spawn(move || {
        if let Ok(catalog) = Catalog::open(&path) {
            let _ = attach_child(
                child,
                &catalog,
                run_id,
                &mut |_| {},
                &AtomicBool::new(false),
            );
        }
    });
    Ok(())
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
        let mut cfg = stored_config(&run)?;
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
    /// An evaluation of the adapter when the run ends (`[eval]`; none by default).
    #[serde(default)]
    pub eval: crate::runs::EvalConfig,
    /// Where it trains (`[target]`; this machine's engine by default).
    #[serde(default)]
    pub target: crate::runs::TargetConfig,
}

impl RunRequest {
    /// The run config: the model resolved, a fresh run folder reserved.
    fn config(self) -> Result<RunConfig> {
        Ok(RunConfig {
            model: resolve_model(Path::new(&self.model))?,
            dataset: self.dataset,
            out: reserve_out_dir(self.method.kind.as_str())?,
            method: self.method,
            train: self.train,
            data: DataConfig {
                format: self.format.unwrap_or_default(),
                ..DataConfig::default()
            },
            eval: self.eval,
            target: self.target,
        })
    }
}

/// Records a run from a form's request (not started: see `launch::start_worker`); returns
/// its id.
pub fn create_requested(catalog: &Catalog, request: RunRequest) -> Result<i64> {
    let name = request.name.clone();
    let cfg = request.config()?;
    create_reserved(catalog, &cfg, name.as_deref(), true)
}

/// Records `cfg` as a run; when its folder was `reserved` for it and the run is refused, the
/// folder goes (`remove_dir` keeps one that is not empty).
pub fn create_reserved(
    catalog: &Catalog,
    cfg: &RunConfig,
    name: Option<&str>,
    reserved: bool,
) -> Result<i64> {
    create_run(catalog, cfg, name).inspect_err(|_| {
        if reserved {
            let _ = std::fs::remove_dir(&cfg.out);
        }
    })
}

/// The catalog and run of a worker command line, or `None` when `args` (after the program
/// name) do not start with `worker`: both front ends start their worker this way.
pub fn parse_worker_args(args: &[String]) -> Option<Result<(PathBuf, i64)>> {
    if args.first().map(String::as_str) != Some("worker") {
        return None;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .ok_or_else(|| AppError::Invalid(format!("worker mode needs {flag}")))
    };
    Some((|| {
        let catalog = PathBuf::from(value("--catalog")?);
        let run = value("--run")?;
        let run = run
            .parse()
            .map_err(|_| AppError::Invalid(format!("--run `{run}` is not a run id")))?;
        Ok((catalog, run))
    })())
}

/// The arguments that start a worker for `run_id` (after the program's own path).
pub fn worker_args(catalog_path: &Path, run_id: i64) -> Vec<std::ffi::OsString> {
    vec![
        "worker".into(),
        "--catalog".into(),
        PathBuf::from(catalog_path).into_os_string(),
        "--run".into(),
        run_id.to_string().into(),
    ]
}
