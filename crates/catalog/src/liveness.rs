//! Finding runs whose worker died: a run is never left `running` with no process behind it.
//! Any program that opens the catalog (app, CLI, another worker) calls [`Catalog::reap_dead`].

use crate::error::Result;
use crate::runs::{RunFilter, RunStatus};
use crate::{now, Catalog};

/// Seconds without a heartbeat after which a worker is presumed dead (it beats every second;
/// this also catches a process id reused by an unrelated program).
pub const HEARTBEAT_TIMEOUT_S: f64 = 20.0;

/// Seconds a queued run may wait for its worker to report before it is presumed lost.
const SPAWN_TIMEOUT_S: f64 = 60.0;

/// Whether process `pid` exists and is not a zombie; `None` where this cannot be told.
pub fn process_alive(pid: i64) -> Option<bool> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => Some(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_none_or(|state| state != "Z" && state != "X"),
        ),
        Err(_) => Some(false),
    }
}

/// Why a live run has no worker behind it, or `None` while it has one.
pub fn death_reason(
    pid: Option<i64>,
    heartbeat_at: Option<f64>,
    queued_at: f64,
    at: f64,
) -> Option<String> {
    let resume = "its last checkpoint can be resumed (`resume`)";
    match pid {
        Some(pid) if process_alive(pid) == Some(false) => Some(format!(
            "the worker (process {pid}) ended without reporting: it was killed (the \
             out-of-memory killer does this) or crashed; {resume}"
        )),
        Some(pid) => {
            let silent = at - heartbeat_at.unwrap_or(queued_at);
            (silent > HEARTBEAT_TIMEOUT_S).then(|| {
                format!(
                    "the worker (process {pid}) has not reported for {silent:.0} s and is \
                     presumed dead; {resume}"
                )
            })
        }
        None => (at - queued_at > SPAWN_TIMEOUT_S).then(|| {
            format!("no worker took the run within {SPAWN_TIMEOUT_S:.0} s of queueing it; {resume}")
        }),
    }
}

impl Catalog {
    /// Marks every live run whose worker is gone as `failed`, with the reason; returns them.
    pub fn reap_dead(&self) -> Result<Vec<(i64, String)>> {
        let live = self.runs(&RunFilter {
            statuses: vec![RunStatus::Queued, RunStatus::Running],
            tag: None,
        })?;
        let at = now();
        let mut reaped = Vec::new();
        for run in live {
            if let Some(reason) = death_reason(run.pid, run.heartbeat_at, run.queued_at, at) {
                if self.finish(run.id, RunStatus::Failed, Some(&reason))? {
                    reaped.push((run.id, reason));
                }
            }
        }
        Ok(reaped)
    }
}
