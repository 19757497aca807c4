//! Where training runs: on a thread of the compute pool, not beside it.
//!
//! candle, gemm and the fused kernels split their work over rayon's pool. Called from a
//! thread outside the pool, each parallel op hands its work over and waits, and between ops
//! the pool's threads spin looking for more while the caller runs the graph's serial parts:
//! one thread more than there are cores, all busy (measured ~4% of a step's CPU time spinning
//! on 2 cores). Run on a pool thread, the caller does its serial work and joins in the
//! parallel work itself.

/// Runs `f` on a thread of rayon's global pool and returns its result.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // From outside the pool, `join` injects both closures into it and blocks until done.
    rayon::join(f, || ()).0
}
