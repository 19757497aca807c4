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
pub const COLS: usize = 32;

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

/// The left operand: rows of `depth` pairs of bf16 (as bits), one row after the other.
#[derive(Clone, Copy)]
pub struct Left<'a> {
    bits: &'a [u16],
    depth: usize,
}

impl<'a> Left<'a> {
    /// Rows packed as words of two bf16 (`bf16_matmul`'s packing of activations).
    pub fn rows_of(words: &'a [u32], depth: usize) -> Self {
        // SAFETY: a u32 is two u16, and u16's alignment is below u32's.
        let bits = unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), 2 * words.len()) };
        Self { bits, depth }
    }

    /// Rows of bf16 as they lie in memory (a weight [n, 2·depth]).
    pub fn rows_of_bits(bits: &'a [u16], depth: usize) -> Self {
        Self { bits, depth }
    }
}

/// Where a 32 × 32 block of the product goes: `dst` [rows, n] row-major, or its transpose
/// [n, rows] (the tiles computed `W·xᵀ` and the caller wants `x·Wᵀ`). Either way the values
/// are stored, or added to what `dst` holds when `accumulate`.
#[derive(Clone, Copy)]
pub enum Out {
    Rows { accumulate: bool },
    Columns { accumulate: bool },
}

/// `a·B` for `rows` rows of `a` against the right operand's panels (`depth × COLS` words
/// each, `n` real columns), into `dst` as `out` says. The larger operand is walked once,
/// the smaller one again for each of its blocks.
///
/// # Safety
/// [`available`] must be true; `a` must hold `rows.div_ceil(ROWS) · ROWS` rows (padded with
/// zeros or real), `panels` `n.div_ceil(COLS) · depth · COLS` words, `depth` must be a
/// multiple of [`TILE_PAIRS`] and `dst` must hold `rows · n` floats.
#[cfg(target_arch = "x86_64")]
pub unsafe fn block(dst: &mut [f32], a: Left, rows: usize, panels: &[u32], n: usize, out: Out) {
    use std::arch::asm;
    let depth = a.depth;
    let (row_blocks, col_blocks) = (rows.div_ceil(ROWS), n.div_ceil(COLS));
    debug_assert!(depth.is_multiple_of(TILE_PAIRS));
    debug_assert!(a.bits.len() >= row_blocks * ROWS * 2 * depth);
    debug_assert!(panels.len() >= col_blocks * depth * COLS);
    debug_assert!(dst.len() >= rows * n);
    let cfg = TileConfig::full();
    let mut tile = [0.0f32; ROWS * COLS];
    let a_stride = depth * 4;
    let b_stride = COLS * 4;
    // SAFETY: the configuration is a valid palette-1 layout; `available` was checked.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    let mut product = |r0: usize, p: usize| {
        let top = &a.bits[r0 * 2 * depth..][..ROWS * 2 * depth];
        let panel = &panels[p * depth * COLS..][..depth * COLS];
        // SAFETY: every tile load reads 16 rows of 64 bytes, `stride` apart, starting at
        // pair `j` of a row of `top` (rows r0..r0 + 32, `depth` pairs each) or of the panel
        // (pair rows of `COLS` words); `j + TILE_PAIRS <= depth` keeps them in bounds, and
        // the stores fill `tile`, 32 rows of `COLS` floats.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for j in (0..depth).step_by(TILE_PAIRS) {
                asm!(
                    "tileloadd tmm4, [{upper} + {sa}*1]",
                    "tileloadd tmm5, [{lower} + {sa}*1]",
                    "tileloadd tmm6, [{left} + {sb}*1]",
                    "tileloadd tmm7, [{right} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    upper = in(reg) top.as_ptr().add(2 * j),
                    lower = in(reg) top.as_ptr().add(2 * (16 * depth + j)),
                    left = in(reg) panel.as_ptr().add(j * COLS),
                    right = in(reg) panel.as_ptr().add(j * COLS + 16),
                    sa = in(reg) a_stride,
                    sb = in(reg) b_stride,
                    options(nostack, readonly)
                );
            }
            let o = tile.as_mut_ptr();
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
        let (live, cols) = (ROWS.min(rows - r0), COLS.min(n - p * COLS));
        match out {
            Out::Rows { accumulate } => {
                for (i, src) in tile.chunks_exact(COLS).take(live).enumerate() {
                    let d = &mut dst[(r0 + i) * n + p * COLS..][..cols];
                    store(d, &src[..cols], accumulate);
                }
            }
            Out::Columns { accumulate } => {
                for (i0, c0) in [(0, 0), (0, 16), (16, 0), (16, 16)] {
                    let (rows16, cols16) = (
                        live.saturating_sub(i0).min(16),
                        cols.saturating_sub(c0).min(16),
                    );
                    if rows16 == 0 || cols16 == 0 {
                        continue;
                    }
                    let d = &mut dst[(p * COLS + c0) * rows + r0 + i0..];
                    let src = &tile[i0 * COLS + c0..];
                    if rows16 == 16 && cols16 == 16 {
                        // SAFETY: 16 rows of 16 floats lie in `src` (COLS apart) and 16 rows
                        // of 16 in `d` (`rows` apart): the block is whole in both.
                        unsafe { store_transposed(d, rows, src, accumulate) }
                    } else {
                        for c in 0..cols16 {
                            let column = src[c..].iter().step_by(COLS).take(rows16);
                            for (d, &v) in d[c * rows..][..rows16].iter_mut().zip(column) {
                                *d = if accumulate { *d + v } else { v };
                            }
                        }
                    }
                }
            }
        }
    };
    if rows >= n {
        for r0 in (0..rows).step_by(ROWS) {
            (0..col_blocks).for_each(|p| product(r0, p));
        }
    } else {
        for p in 0..col_blocks {
            (0..rows).step_by(ROWS).for_each(|r0| product(r0, p));
        }
    }
    // SAFETY: returns the tile state to its initial state; no memory is touched.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// The 16 × 16 block at `src` (rows `COLS` apart) transposed into `dst` (rows `stride`
/// apart): `dst[c][i] = src[i][c]`, stored or added. Four rounds of AVX-512 shuffles
/// (32-bit, 64-bit, then two of 128-bit lanes) instead of 256 scalar moves.
///
/// # Safety
/// AVX-512F; `src` must hold 15·COLS + 16 floats and `dst` 15·stride + 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(dst: &mut [f32], stride: usize, src: &[f32], accumulate: bool) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() >= 15 * COLS + 16 && dst.len() >= 15 * stride + 16);
    // SAFETY: every load and store stays within the extents the caller vouches for.
    unsafe {
        let a: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.as_ptr().add(i * COLS)));
        // Pairs of rows interleaved by 32 bits, then by 64: u[4g + q] holds, in each 128-bit
        // lane L, rows 4g..4g + 4 of column 4L + q.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (x, y) = (a[i & !1], a[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(x, y)
            } else {
                _mm512_unpackhi_ps(x, y)
            }
        });
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let t = &t[4 * g..];
            u[4 * g] = _mm512_shuffle_ps::<0x44>(t[0], t[2]);
            u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t[0], t[2]);
            u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t[1], t[3]);
            u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t[1], t[3]);
        }
        // Lanes gathered: column 4L + q is lane L of u[q], u[4 + q], u[8 + q], u[12 + q].
        for q in 0..4 {
            let v = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
            let w = _mm512_shuffle_f32x4::<0xDD>(u[q], u[4 + q]);
            let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
            let w2 = _mm512_shuffle_f32x4::<0xDD>(u[8 + q], u[12 + q]);
            let columns = [
                (q, _mm512_shuffle_f32x4::<0x88>(v, v2)),
                (4 + q, _mm512_shuffle_f32x4::<0x88>(w, w2)),
                (8 + q, _mm512_shuffle_f32x4::<0xDD>(v, v2)),
                (12 + q, _mm512_shuffle_f32x4::<0xDD>(w, w2)),
            ];
            for (c, x) in columns {
                let ptr = dst.as_mut_ptr().add(c * stride);
                let x = if accumulate {
                    _mm512_add_ps(x, _mm512_loadu_ps(ptr))
                } else {
                    x
                };
                _mm512_storeu_ps(ptr, x);
            }
        }
    }
}

fn store(dst: &mut [f32], src: &[f32], accumulate: bool) {
    if accumulate {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
    } else {
        dst.copy_from_slice(src);
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn block(_: &mut [f32], _: Left, _: usize, _: &[u32], _: usize, _: Out) {
    unreachable!("AMX products run only where `available`")
}
