//! Launching a job and following it: its event lines go to the run's sinks as the studio's
//! own trainer's would; everything else it prints goes to `job.log` in the bundle, the last
//! lines of which explain a job that dies. A cancel becomes the bundle's STOP file (the job
//! checkpoints and stops between steps); a job that does not stop is killed.

use std::io::{BufRead, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::bundle::STOP_FILE;
use super::place::{quote, Place};
use super::target::TargetConfig;
use crate::error::{EngineError, Result};
use crate::train::{TrainEvent, TrainSink};

/// How long a job may take to stop after its STOP file appears before it is terminated (a
/// Slurm job's follower cancels it then), and then before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(120);
const KILL_GRACE: Duration = Duration::from_secs(30);
/// The job log's name inside the bundle.
pub const JOB_LOG: &str = "job.log";

/// How a job that ran to its end finished.
pub struct Finished {
    /// Whether it stopped on request.
    pub cancelled: bool,
}

/// Launches the job where `place` says and follows it to its end.
pub fn run_job(
    target: &TargetConfig,
    place: &Place,
    resume: bool,
    sink: &mut dyn TrainSink,
    cancel: &AtomicBool,
) -> Result<Finished> {
    let fail = |message: String| EngineError::Job {
        target: target.kind.as_str().into(),
        message,
    };
    let mut child = launch(target, place, resume)
        .map_err(|e| fail(format!("cannot start `{}`: {e}", target.python)))?;
    let log_path = place.local_bundle().join(JOB_LOG);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| EngineError::io(&log_path, e))?;
    let lines = read_lines(&mut child);
    let mut finished = None;
    // The first exception the job printed, and its last line: what explains a failure.
    let (mut first_error, mut last_line): (Option<String>, Option<String>) = (None, None);
    let mut stop_asked: Option<Instant> = None;
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            // A remote job's terminal ends its lines with CR LF.
            Ok(line) => match serde_json::from_str::<TrainEvent>(line.trim_end_matches('\r')) {
                Ok(event) => {
                    if let TrainEvent::Finished { cancelled, .. } = &event {
                        finished = Some(Finished {
                            cancelled: *cancelled,
                        });
                    }
                    sink.event(&event);
                }
                Err(_) => {
                    let _ = writeln!(log, "{line}");
                    if first_error.is_none() && is_exception(&line) {
                        first_error = Some(line.clone());
                    }
                    last_line = Some(line);
                }
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if cancel.load(Ordering::Relaxed) && stop_asked.is_none() {
            place.ask_stop()?;
            stop_asked = Some(Instant::now());
        }
        match stop_asked.map(|t| t.elapsed()) {
            Some(t) if t > STOP_GRACE + KILL_GRACE => signal_group(&child, libc::SIGKILL),
            Some(t) if t > STOP_GRACE => signal_group(&child, libc::SIGTERM),
            _ => {}
        }
    }
    let status = child
        .wait()
        .map_err(|e| EngineError::io(place.local_bundle(), e))?;
    match finished {
        // A job that said it finished has written its adapter; how its launcher then exits
        // (a teardown warning) does not undo that.
        Some(f) => Ok(f),
        None => {
            // ssh's own failures (a cut connection) exit with 255.
            let cut = place
                .host()
                .filter(|_| killed(status) || status.code() == Some(255));
            // The root cause where Python printed one; a killed job's or cut connection's last
            // lines are whatever the job was doing, not why it ended.
            let said = first_error.or_else(|| match killed(status) || cut.is_some() {
                true => None,
                false => last_line,
            });
            let said = said.map(|s| format!(": {}", s.trim())).unwrap_or_default();
            let how = match cut {
                Some(host) => format!("the ssh connection to {host} was cut"),
                None => describe(status),
            };
            Err(fail(format!(
                "{how} before finishing the run{said}; the whole log: {}",
                log_path.display()
            )))
        }
    }
}

/// Whether a line of the job's output is a Python exception's (`ValueError: …`), the launcher's
/// report that a process failed excepted: the first one is the root cause.
fn is_exception(line: &str) -> bool {
    // Past the launcher's `[rank1]: ` prefix.
    let line = match line.split_once("]: ") {
        Some((rank, rest)) if rank.starts_with("[rank") => rest,
        _ => line,
    };
    let head = line.split(": ").next().unwrap_or("");
    let name = head.rsplit([' ', '.']).next().unwrap_or("");
    line.contains(": ")
        && (name.ends_with("Error") || name.ends_with("Exception"))
        && name != "ChildFailedError"
}

/// Starts the bundle's launch script (`accelerate launch` of the entry point) with the
/// target's Python where the job runs, in a process group of its own (so that the job's
/// processes, or its ssh connection, can be stopped together), its output on pipes.
fn launch(target: &TargetConfig, place: &Place, resume: bool) -> std::io::Result<Child> {
    let model = place
        .model_override()
        .map(|m| format!("PEFT_STUDIO_MODEL={m} "))
        .unwrap_or_default();
    let line = format!(
        "rm -f {STOP_FILE} && PYTHON={} MAIN_PROCESS_PORT={} PYTHONUNBUFFERED=1 {model}exec sh {}{}",
        quote(&target.python),
        free_port()?,
        place.start_script(),
        if resume { " --resume" } else { "" }
    );
    let mut cmd = place.shell(&line, true);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    #[cfg(target_os = "linux")]
    // SAFETY: between fork and exec only prctl(2) runs, which is async-signal-safe. The
    // launcher gets SIGTERM when the thread that started it (the worker's) dies, and torchrun
    // passes it to the processes (over ssh, the connection ends and the terminal's hang-up
    // ends the job there): a killed worker leaves no job behind.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// A port for the processes' rendezvous that nothing listens on now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Every line the job prints, stdout and stderr interleaved as they come.
fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Signals the job's whole process group (the launcher and every process it started).
fn signal_group(child: &Child, signal: i32) {
    #[cfg(unix)]
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
    unsafe {
        libc::kill(-(child.id() as i32), signal);
    }
}

/// Whether a signal ended the job's launcher.
fn killed(status: ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal().is_some()
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        false
    }
}

/// Words for how the job's launcher ended.
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(9) => {
                return "the job was killed (SIGKILL: the out-of-memory killer sends this)".into()
            }
            Some(sig) => return format!("the job was killed by signal {sig}"),
            None => {}
        }
    }
    match status.code() {
        Some(0) => "the job exited".into(),
        Some(code) => format!("the job exited with status {code}"),
        None => format!("the job ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::is_exception;

    #[test]
    fn the_root_cause_is_an_exception_line() {
        assert!(is_exception("[rank1]: ValueError: When using DeepSpeed, …"));
        assert!(is_exception("torch.OutOfMemoryError: CUDA out of memory."));
        assert!(!is_exception(
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "
        ));
        assert!(!is_exception("  error_file: <N/A>"));
    }
}
