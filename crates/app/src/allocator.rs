//! The process allocator for every program that links the studio (CLI, desktop, workers).
//!
//! Training frees and allocates the same large buffers every step. glibc hands buffers over
//! 32 MB back to the kernel on free and pays a zeroed page fault per 4 KiB when they return;
//! mimalloc with purging off keeps them and reuses them. Measured on SmolLM2-135M, LoRA,
//! 4 × 256 tokens (docs/BENCHMARKS.md): system time per run 9.8 s (glibc), 9.3 s (mimalloc,
//! default purging), 2.0 s (purging off); tokens/s 93 → 102 → 117.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (mimalloc.h; the Rust bindings do
/// not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process for reuse instead of returning it to the kernel: call
/// first thing in a program that trains. Memory the studio frees stays counted in its
/// resident size until the process ends, which is what the workers and the CLI want.
pub fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe in mimalloc; -1 means "never purge".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
