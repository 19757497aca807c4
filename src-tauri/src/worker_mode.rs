//! `peft-studio worker --catalog FILE --run ID`: the window starts this program again in
//! worker mode to train a run in a process of its own (launch::spawn_worker's arguments).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The catalog and run of a worker command line, or `None` when `args` (after the program
/// name) do not start with `worker`.
pub fn parse(args: &[String]) -> Option<Result<(PathBuf, i64), String>> {
    if args.first().map(String::as_str) != Some("worker") {
        return None;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .ok_or_else(|| format!("worker mode needs {flag}"))
    };
    Some((|| {
        let catalog = PathBuf::from(value("--catalog")?);
        let run = value("--run")?;
        let run = run
            .parse()
            .map_err(|_| format!("--run `{run}` is not a run id"))?;
        Ok((catalog, run))
    })())
}

/// Trains the run; the exit code says whether it finished (its outcome is in the catalog).
pub fn run(catalog: PathBuf, run_id: i64) -> i32 {
    match peft_studio_app::worker::run_worker(&catalog, run_id, Arc::new(AtomicBool::new(false))) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("run {run_id}: {e}");
            1
        }
    }
}
