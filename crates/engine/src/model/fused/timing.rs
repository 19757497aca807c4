//! Timing a piece of work the way the kernel choice and `bench` read it: the best of a few
//! runs, so that a descheduled run does not count.

use std::time::Instant;

/// The shortest of `repeats` timed runs of `run`, after one untimed warm-up run.
pub(super) fn best_seconds(repeats: usize, run: &mut dyn FnMut()) -> f64 {
    run();
    (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
