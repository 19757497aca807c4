//! bf16 products on AMX tiles (`tdpbf16ps`: a 16 × 16 f32 tile gains a 16 × 32 bf16 tile
//! times a 32 × 16 one, 8,192 products, in one instruction) for CPUs that have them (Intel
//! Sapphire Rapids and later). They take the operands `bf16_matmul` packs for its AVX-512-BF16
//! kernel as they are: the left one row by row in pairs of `k`, the right one in panels of
//! 32 columns, pair after pair; both with their pairs padded to whole tiles (`TILE_PAIRS`).
//!
//! Rust has no stable AMX intrinsics, so the instructions are written as inline assembly.
//! Linux gives a process tile registers only after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`, the kernel's Documentation/arch/x86/xstate.rst); `available` asks
//! once and says no where the CPU, the kernel or `PEFT_STUDIO_AMX=off` refuses.

use std::sync::OnceLock;

/// Pairs of `k` in one tile row: a tile row holds 64 bytes.
pub const TILE_PAIRS: usize = 16;
/// Rows of the left operand one kernel call covers: two tiles of 16.
pub const ROWS: usize = 32;
/// Columns of one panel of the right operand: two tiles of 16.
const COLS: usize = 32;

/// Whether products run on AMX tiles here: the CPU has AMX-BF16, Linux granted the tile
/// data, and `PEFT_STUDIO_AMX` is not `off` (then AVX-512-BF16 serves: for comparisons).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let off = std::env::var("PEFT_STUDIO_AMX").is_ok_and(|v| v == "off");
        !off && cpu_has_amx() && request_tile_data()
    })
}

/// CPUID leaf 7 names AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24); Rust's feature detection
/// of them is not stable yet. The bf16 packing around the tiles needs AVX-512-BF16.
#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    // SAFETY: CPUID exists on every x86-64 CPU (a safe function in newer Rust).
    #[allow(unused_unsafe)]
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    edx & (1 << 22) != 0
        && edx & (1 << 24) != 0
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx() -> bool {
    false
}

/// Asks Linux for the tile data state, which it grants per process (every thread, present
/// and future).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes which register state this
    // process may use; it reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

/// The tile configuration (`ldtilecfg`'s 64 bytes, palette 1): tiles 0–7 of 16 rows of 64
/// bytes. Tiles 0–3 accumulate a 32 × 32 block of the result, 4–5 hold the left operand's
/// two row tiles and 6–7 the panel's two column tiles.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn full() -> Self {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        cfg.bytes_per_row[..8].fill(64);
        cfg.rows[..8].fill(16);
        cfg
    }
}

/// `dst = a·B` (or `+=` when `accumulate`) for one thread's rows: `a` holds `rows` (padded to
/// `ROWS` with zero rows) of `depth` words each, `panels` the right operand's panels of
/// `depth × COLS` words, `n` its real columns; `dst` is [rows, n] row-major.
///
/// # Safety
/// [`available`] must be true; `a` must hold `rows.div_ceil(ROWS) · ROWS · depth` words,
/// `panels` `n.div_ceil(COLS) · depth · COLS`, `depth` must be a multiple of [`TILE_PAIRS`]
/// and `dst` must hold `rows · n` floats.
#[cfg(target_arch = "x86_64")]
pub unsafe fn block(
    dst: &mut [f32],
    a: &[u32],
    rows: usize,
    panels: &[u32],
    (depth, n): (usize, usize),
    accumulate: bool,
) {
    use std::arch::asm;
    debug_assert!(depth % TILE_PAIRS == 0);
    debug_assert!(a.len() >= rows.div_ceil(ROWS) * ROWS * depth);
    debug_assert!(panels.len() >= n.div_ceil(COLS) * depth * COLS);
    let cfg = TileConfig::full();
    let mut out = [0.0f32; ROWS * COLS];
    let a_stride = depth * 4;
    let b_stride = COLS * 4;
    // SAFETY: the configuration is a valid palette-1 layout; `available` was checked.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    for p in 0..n.div_ceil(COLS) {
        let panel = &panels[p * depth * COLS..][..depth * COLS];
        let cols = COLS.min(n - p * COLS);
        for r0 in (0..rows).step_by(ROWS) {
            let top = &a[r0 * depth..][..ROWS * depth];
            // SAFETY: every tile load reads 16 rows of 64 bytes, `stride` apart, starting at
            // pair `j` of a row of `top` (rows r0..r0 + 32, `depth` words each) or of the panel
            // (pair rows of `COLS` words); `j + TILE_PAIRS <= depth` keeps them in bounds.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                for j in (0..depth).step_by(TILE_PAIRS) {
                    let upper = top.as_ptr().add(j);
                    let lower = top.as_ptr().add(16 * depth + j);
                    let left = panel.as_ptr().add(j * COLS);
                    let right = panel.as_ptr().add(j * COLS + 16);
                    asm!(
                        "tileloadd tmm4, [{upper} + {sa}*1]",
                        "tileloadd tmm5, [{lower} + {sa}*1]",
                        "tileloadd tmm6, [{left} + {sb}*1]",
                        "tileloadd tmm7, [{right} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        upper = in(reg) upper,
                        lower = in(reg) lower,
                        left = in(reg) left,
                        right = in(reg) right,
                        sa = in(reg) a_stride,
                        sb = in(reg) b_stride,
                        options(nostack, readonly)
                    );
                }
                let o = out.as_mut_ptr();
                asm!(
                    "tilestored [{o} + {s}*1], tmm0",
                    "tilestored [{o1} + {s}*1], tmm1",
                    "tilestored [{o2} + {s}*1], tmm2",
                    "tilestored [{o3} + {s}*1], tmm3",
                    o = in(reg) o,
                    o1 = in(reg) o.add(16),
                    o2 = in(reg) o.add(16 * COLS),
                    o3 = in(reg) o.add(16 * COLS + 16),
                    s = in(reg) COLS * 4,
                    options(nostack)
                );
            }
            let live = ROWS.min(rows - r0);
            for (i, src) in out.chunks_exact(COLS).take(live).enumerate() {
                let d = &mut dst[(r0 + i) * n + p * COLS..][..cols];
                if accumulate {
                    d.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                } else {
                    d.copy_from_slice(&src[..cols]);
                }
            }
        }
    }
    // SAFETY: returns the tile state to its initial state; no memory is touched.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn block(_: &mut [f32], _: &[u32], _: usize, _: &[u32], _: (usize, usize), _: bool) {
    unreachable!("AMX products run only where `available`")
}
