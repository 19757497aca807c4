//! Attaching to a run from the catalog alone (no child process): the history first, then
//! each new step as the worker records it. This is how a reopened window or a second
//! terminal follows a run that is already training.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peft_studio_catalog::{Catalog, MetricRow, Run};

use crate::error::Result;

/// How often the catalog is polled; the worker writes every 100 ms, so a step reaches the
/// follower in under 200 ms.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `on_rows` with the run's metrics so far, then with new rows as they arrive, until
/// the run stops or `stop` is set; returns the run as it ended. The last step seen may be
/// sent again with more fields (its validation loss comes after its training loss), and after
/// a resume the history is sent again, then the retrained steps as they come: keep the newest
/// row per step.
pub fn follow(
    catalog: &Catalog,
    run_id: i64,
    on_rows: &mut dyn FnMut(&[MetricRow]),
    stop: &AtomicBool,
) -> Result<Run> {
    let mut seen = -1i64;
    let mut last_sent: Option<MetricRow> = None;
    let mut queued_at: Option<f64> = None;
    let mut last_reap = Instant::now();
    loop {
        // Read the run before its rows: a run seen ending has all its rows written.
        let run = catalog.run(run_id)?;
        // A resumed run is queued anew and trains the steps after its checkpoint again: send
        // the history again (receivers keep the newest row per step).
        let last = catalog.last_step(run_id)?;
        if last < seen || queued_at.is_some_and(|t| t != run.queued_at) {
            seen = -1;
            last_sent = None;
        }
        queued_at = Some(run.queued_at);
        let rows = catalog.metrics(run_id, seen - 1)?;
        let fresh: Vec<MetricRow> = rows
            .into_iter()
            .filter(|r| r.step > seen || (r.step == seen && last_sent.as_ref() != Some(r)))
            .collect();
        if let Some(last) = fresh.last() {
            seen = last.step;
            last_sent = Some(last.clone());
            on_rows(&fresh);
        }
        if !run.status.is_live() || stop.load(Ordering::Relaxed) {
            return Ok(run);
        }
        if last_reap.elapsed() >= Duration::from_secs(1) {
            catalog.reap_dead()?;
            last_reap = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}
