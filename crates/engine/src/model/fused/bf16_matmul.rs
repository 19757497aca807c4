//! Matrix products with bf16 inputs and f32 accumulation on CPUs with AVX-512-BF16
//! (`vdpbf16ps`: 32 bf16 products a cycle per core where an f32 FMA gives 16). They serve a
//! bf16 model's frozen weights: no f32 copy of a weight, and the other operand (the
//! activations or their gradient, f32 inside the fused kernels) rounded to bf16 as it is
//! packed, as PyTorch's bf16 autocast rounds it. Elsewhere the weights are widened to f32
//! and multiplied in f32 (`view`).
//!
//! `vdpbf16ps` adds `a[2i]·b[2i] + a[2i+1]·b[2i+1]` to f32 lane `i`, so both operands come
//! as pairs of consecutive `k`: the left one row by row (a row of bf16 is its pairs), the
//! right one packed in panels of 32 columns, pair after pair (`Packed`). On CPUs with AMX
//! the same operands go to tile products instead (`amx`), which is why pairs are padded to
//! whole tiles.

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

use super::amx;
use super::math;
use super::spare;

/// Output columns per panel (two 16-lane registers) and rows per micro-kernel call: 8 × 2
/// accumulators, two panel loads and a broadcast fit the 32 vector registers.
const NR: usize = 32;
const MR: usize = 8;
// The tiles read the same panels.
const _: () = assert!(NR == amx::COLS);

/// Whether bf16 weights are multiplied as they are ([`Kernel::best`] chose a kernel), rather
/// than widened and multiplied in f32.
pub fn available() -> bool {
    Kernel::best().is_some()
}

/// `PEFT_STUDIO_BF16_PRODUCTS`: `off` widens bf16 weights to f32 (for comparisons), `on`
/// takes the dot products without timing them (tests); anything else lets
/// [`Kernel::best`] choose.
fn products_setting() -> Option<String> {
    std::env::var("PEFT_STUDIO_BF16_PRODUCTS").ok()
}

/// Whether this CPU runs the kernels (AVX-512-BF16) and the setting is not `off`.
fn cpu_runs_bf16() -> bool {
    products_setting().as_deref() != Some("off") && cpu_has_bf16()
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_bf16() -> bool {
    false
}

/// The right operand `B` [k, n] of a product, in panels of `NR` columns: panel `p` holds, pair
/// by pair of `k`, `NR` words of two bf16 (`B[2j][c]` low, `B[2j + 1][c]` high); columns
/// past `n`, a row past an odd `k` and the pairs from `pairs` to `depth` are zeros.
pub struct Packed {
    k: usize,
    n: usize,
    pairs: usize,
    /// `pairs` rounded up to whole AMX tiles: the pair rows each panel holds.
    depth: usize,
    words: Vec<u32>,
}

impl Packed {
    /// `n` columns of `k` in panels, each filled on every thread by `fill(p, panel)`, which
    /// must write every word of its panel (`depth × NR`; `clear_padding` zeroes a panel that
    /// has columns past `n` or pairs past `k`'s, before `fill` writes the rest). The words
    /// come from a buffer an earlier product gave back where one is large enough.
    fn panels(k: usize, n: usize, fill: impl Fn(usize, &mut [u32]) + Sync) -> Self {
        let (pairs, depth) = pairs_and_depth(k);
        let mut words = spare::take(n.div_ceil(NR) * depth * NR);
        if depth > 0 {
            words
                .par_chunks_mut(depth * NR)
                .enumerate()
                .for_each(|(p, panel)| fill(p, panel));
        }
        Self {
            k,
            n,
            pairs,
            depth,
            words,
        }
    }

    /// Zeroes panel `p` where it has columns past `n` or pairs past `k`'s: the words `fill`
    /// does not write. Returns the panel's live columns.
    fn clear_padding(&self, p: usize, panel: &mut [u32]) -> usize {
        let cols = NR.min(self.n - p * NR);
        if cols < NR || self.pairs < self.depth {
            panel.fill(0);
        }
        cols
    }

    fn build(k: usize, n: usize, at: impl Fn(usize, usize) -> u16 + Sync) -> Self {
        let shape = Self::shape(k, n);
        Self::panels(k, n, |p, panel| {
            let cols = shape.clear_padding(p, panel);
            for (j, pair) in panel.chunks_exact_mut(NR).take(shape.pairs).enumerate() {
                let (k0, k1) = (2 * j, 2 * j + 1);
                for (c, w) in pair[..cols].iter_mut().enumerate() {
                    let col = p * NR + c;
                    let hi = if k1 < k { at(k1, col) } else { 0 };
                    *w = word(at(k0, col), hi);
                }
            }
        })
    }

    /// The sizes of a packing of `k × n`, without its words (for `clear_padding`).
    fn shape(k: usize, n: usize) -> Self {
        let (pairs, depth) = pairs_and_depth(k);
        Self {
            k,
            n,
            pairs,
            depth,
            words: Vec::new(),
        }
    }

    /// `B = Wᵀ` for `W` [n, k] row-major: `x·Wᵀ`, a linear layer's forward product. A row of
    /// `W` is already its pairs: each lands, word by word, in its panel's column.
    pub fn transposed(w: &[bf16], n: usize, k: usize) -> Self {
        if k % 2 == 1 {
            return Self::build(k, n, |r, c| w[c * k + r].to_bits());
        }
        let shape = Self::shape(k, n);
        Self::panels(k, n, |p, panel| {
            shape.clear_padding(p, panel);
            let rows = &w[p * NR * k..][..NR.min(n - p * NR) * k];
            for (c, row) in rows.chunks_exact(k).enumerate() {
                spread(panel, c, row);
            }
        })
    }

    /// `B = W` for `W` [k, n] row-major: `g·W`, a linear layer's input gradient. Pair `j` of
    /// a panel interleaves rows `2j` and `2j + 1` over the panel's columns.
    pub fn plain(w: &[bf16], k: usize, n: usize) -> Self {
        let shape = Self::shape(k, n);
        Self::panels(k, n, |p, panel| {
            let (c0, cols) = (p * NR, shape.clear_padding(p, panel));
            for (j, pair) in panel.chunks_exact_mut(NR).take(shape.pairs).enumerate() {
                let lo = &w[2 * j * n + c0..][..cols];
                let pair = &mut pair[..cols];
                if 2 * j + 1 < k {
                    interleave(pair, lo, &w[(2 * j + 1) * n + c0..][..cols]);
                } else {
                    for (d, l) in pair.iter_mut().zip(lo) {
                        *d = word(l.to_bits(), 0);
                    }
                }
            }
        })
    }

    /// `B = Xᵀ` for `X` [n, k] row-major f32, rounded to bf16: the activations as the right
    /// operand, when the weight's rows are the left one (`matmul_wt`).
    fn activations(x: &[f32], n: usize, k: usize) -> Self {
        let shape = Self::shape(k, n);
        Self::panels(k, n, |p, panel| {
            shape.clear_padding(p, panel);
            // A row rounded at once (vectorised), then its pairs spread over the panel's
            // column; an odd `k`'s last pair keeps a zero high half.
            let mut rounded = vec![bf16::ZERO; 2 * shape.pairs];
            let rows = &x[p * NR * k..][..NR.min(n - p * NR) * k];
            for (c, row) in rows.chunks_exact(k).enumerate() {
                round_into(row, &mut rounded[..k]);
                spread(panel, c, &rounded);
            }
        })
    }

    fn panel(&self, p: usize) -> &[u32] {
        &self.words[p * self.depth * NR..][..self.depth * NR]
    }
}

/// A word of two bf16: `lo`'s bits in the low half, `hi`'s in the high one.
#[inline(always)]
fn word(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// A row of `k` bf16 (an even count, or padded with a zero to one) as its pairs' words, down
/// column `c` of a panel: word `j` at `j·NR + c`.
fn spread(panel: &mut [u32], c: usize, row: &[bf16]) {
    for (j, pair) in row.chunks_exact(2).enumerate() {
        panel[j * NR + c] = word(pair[0].to_bits(), pair[1].to_bits());
    }
}

math::vectorised! {
    /// Words of two bf16: `lo` in the low half, `hi` in the high one.
    fn interleave(words: &mut [u32], lo: &[bf16], hi: &[bf16]) {
        for ((d, l), h) in words.iter_mut().zip(lo).zip(hi) {
            *d = word(l.to_bits(), h.to_bits());
        }
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        spare::give_back(std::mem::take(&mut self.words));
    }
}

/// The pairs of `k`, and those rounded up to whole AMX tiles.
fn pairs_and_depth(k: usize) -> (usize, usize) {
    let pairs = k.div_ceil(2);
    (pairs, pairs.next_multiple_of(amx::TILE_PAIRS))
}

/// Which instructions multiply: AMX tiles (`amx`) or AVX-512-BF16 dot products (`block`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `tdpbf16ps` on AMX tiles: 32 × 32 blocks of the result.
    Tiles,
    /// `vdpbf16ps` on AVX-512 registers: 8 × 32 blocks of the result.
    DotProducts,
}

impl Kernel {
    /// The kernel bf16 products run on, `None` where widening to f32 serves better: AMX tiles
    /// where the CPU has them (4–7× the dot products, 4–6× f32: docs/BENCHMARKS.md, the AMX
    /// VM); else the dot products where, timed once on this CPU, they beat widening the
    /// weight and multiplying in f32 by [`DOTS_MARGIN`] (about 2× on an AMD EPYC with
    /// AVX-512-BF16, 0.55× on an Intel Xeon's cores: docs/BENCHMARKS.md), so that bf16 is
    /// never slower than f32. `PEFT_STUDIO_BF16_PRODUCTS=on` takes the dot products unmeasured
    /// (tests), `off` widens. Decided once per process.
    pub fn best() -> Option<Kernel> {
        static BEST: OnceLock<Option<Kernel>> = OnceLock::new();
        *BEST.get_or_init(|| {
            let forced = products_setting().as_deref() == Some("on");
            match Self::available().first().copied() {
                Some(Kernel::DotProducts) if !forced => {
                    (dots_against_widening() >= DOTS_MARGIN).then_some(Kernel::DotProducts)
                }
                first => first,
            }
        })
    }

    /// Every kernel this CPU runs, fastest first (decided once per process).
    pub fn available() -> &'static [Kernel] {
        static KERNELS: OnceLock<Vec<Kernel>> = OnceLock::new();
        KERNELS.get_or_init(|| {
            let mut kernels = Vec::new();
            if cpu_runs_bf16() {
                if amx::available() {
                    kernels.push(Kernel::Tiles);
                }
                kernels.push(Kernel::DotProducts);
            }
            kernels
        })
    }

    /// The kernel's name in `bench`'s output.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Tiles => "amx",
            Kernel::DotProducts => "avx512-bf16",
        }
    }

    /// Rows each call of the kernel covers; a thread's rows are padded to a multiple.
    fn rows(self) -> usize {
        match self {
            Kernel::Tiles => amx::ROWS,
            Kernel::DotProducts => MR,
        }
    }
}

/// `dst = a·B` (or `dst += a·B` when `accumulate`) for `a` [m, k] row-major f32 (rounded to
/// bf16) and `dst` [m, n] row-major, rows split across rayon's threads (`parallel`) or on the
/// calling one. Needs [`available`].
pub fn matmul(dst: &mut [f32], a: &[f32], b: &Packed, accumulate: bool, parallel: bool) {
    // Without AVX-512-BF16 `matmul_with` refuses the fallback named here.
    let kernel = Kernel::best().unwrap_or(Kernel::DotProducts);
    matmul_with(kernel, dst, a, b, accumulate, parallel)
}

/// [`matmul`] on the given kernel, which must be one of [`Kernel::available`].
pub fn matmul_with(
    kernel: Kernel,
    dst: &mut [f32],
    a: &[f32],
    b: &Packed,
    accumulate: bool,
    parallel: bool,
) {
    let (k, n) = (b.k, b.n);
    let m = a.len().checked_div(k).unwrap_or(dst.len() / n.max(1));
    assert!(
        a.len() == m * k && dst.len() == m * n && Kernel::available().contains(&kernel),
        "bf16 matmul: bad operands"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let unit = kernel.rows();
    let per = rows_per_thread(m, unit, parallel);
    dst.par_chunks_mut(per * n)
        .zip(a.par_chunks(per * k))
        .for_each(|(d, a)| {
            let rows = d.len() / n;
            // SAFETY: the CPU runs `kernel` (checked above); the packed rows and panels have
            // the extents both kernels ask for.
            unsafe {
                let packed = pack_rows(&a[..rows * k], k, b.depth, unit);
                match kernel {
                    Kernel::Tiles => amx::block(
                        d,
                        amx::Left::rows_of(&packed, b.depth),
                        rows,
                        &b.words,
                        n,
                        amx::Out::Rows { accumulate },
                    ),
                    Kernel::DotProducts => block(d, &packed, rows, b, accumulate),
                }
            }
        });
}

/// `dst = x·Wᵀ` (or `+=` when `accumulate`) for `x` [m, k] f32 (rounded to bf16) and a
/// bf16 weight `W` [n, k], threads as for [`matmul`]. Where AMX serves and whole tiles cover
/// the weight (`k` and `n` multiples of 32), its rows are the tiles' left operand as they lie
/// in memory, the activations are packed instead of the weight, and the tiles' `W·xᵀ` is
/// written transposed: no pass over the weight but the product's own. Else
/// `Packed::transposed` and [`matmul`].
pub fn matmul_wt(
    dst: &mut [f32],
    x: &[f32],
    w: &[bf16],
    (n, k): (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let m = x.len().checked_div(k).unwrap_or(0);
    assert!(
        w.len() == n * k && x.len() == m * k && dst.len() == m * n,
        "bf16 matmul: bad operands"
    );
    let in_place =
        Kernel::best() == Some(Kernel::Tiles) && k.is_multiple_of(32) && n.is_multiple_of(32);
    if !in_place || m == 0 {
        return matmul(dst, x, &Packed::transposed(w, n, k), accumulate, parallel);
    }
    let per = rows_per_thread(m, amx::ROWS, parallel);
    // SAFETY: bf16 is a transparent u16.
    let w_bits: &[u16] = unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len()) };
    dst.par_chunks_mut(per * n)
        .zip(x.par_chunks(per * k))
        .for_each(|(d, x)| {
            let rows = d.len() / n;
            let panels = Packed::activations(&x[..rows * k], rows, k);
            // SAFETY: tiles are available (checked above); `w` has `n` rows, a multiple of
            // 32, of `k / 2` pairs, a multiple of 16, and `panels` holds `rows` columns.
            unsafe {
                amx::block(
                    d,
                    amx::Left::rows_of_bits(w_bits, k / 2),
                    n,
                    &panels.words,
                    rows,
                    amx::Out::Columns { accumulate },
                )
            }
        });
}

/// How much faster the dot products must be than widening for [`Kernel::best`] to take them:
/// widening keeps the activations in f32, so a near tie goes to it, and a machine near the
/// line does not flip between runs (resume reproduces a run only on the same kernel).
const DOTS_MARGIN: f64 = 1.15;

/// The dot products' speed over widening's on this CPU, on the calling thread: `x·Wᵀ` at a
/// small decoder's shape, the weight packed (dot products) or widened to f32 (OpenBLAS) per
/// product as training does, the best of three runs each after one warm-up.
fn dots_against_widening() -> f64 {
    use super::matmul::{matmul, Mat};
    use super::timing::best_seconds;
    let (m, k, n) = (128, 1024, 1024);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 / 16.0 - 0.5).collect();
    let w: Vec<bf16> = (0..n * k)
        .map(|i| bf16::from_f32((i % 13) as f32 / 64.0 - 0.1))
        .collect();
    let mut y = vec![0.0f32; m * n];
    let dots = best_seconds(3, &mut || {
        let packed = Packed::transposed(&w, n, k);
        matmul_with(Kernel::DotProducts, &mut y, &x, &packed, false, false)
    });
    let widened = best_seconds(3, &mut || {
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let (xm, wt) = (Mat::rows(&x, m, k, k), Mat::rows(&wf, n, k, k).t());
        matmul(&mut y, n, xm, wt, 1.0, false)
    });
    widened / dots.max(1e-12)
}

/// Rows of `m` each thread takes (all on one when not `parallel`): a multiple of `unit`, the
/// rows a kernel call covers.
fn rows_per_thread(m: usize, unit: usize, parallel: bool) -> usize {
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    m.div_ceil(threads).div_ceil(unit) * unit
}

/// `src` rounded to bf16 (to nearest, ties to even) into `dst`, 32 at a time where the CPU
/// has AVX-512-BF16.
pub fn round_into(src: &[f32], dst: &mut [bf16]) {
    let n = src.len().min(dst.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if cpu_has_bf16() {
        // SAFETY: the CPU has AVX-512-BF16 (checked above).
        done = unsafe { round_into_avx512(&src[..n], &mut dst[..n]) };
    }
    for (d, s) in dst[done..n].iter_mut().zip(&src[done..n]) {
        *d = bf16::from_f32(*s);
    }
}

/// [`round_into`] for the whole multiples of 32; returns how many were rounded.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_into_avx512(src: &[f32], dst: &mut [bf16]) -> usize {
    use std::arch::x86_64::{__m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_storeu_si512};
    let whole = src.len() / 32 * 32;
    for j in (0..whole).step_by(32) {
        // SAFETY: 32 floats from `src[j..]` and 32 halves into `dst[j..]`, in bounds.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(j));
            let hi = _mm512_loadu_ps(src.as_ptr().add(j + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(j).cast(), v);
        }
    }
    whole
}

/// `a` [rows, k] rounded to bf16 as pairs of `k`, `depth` words a row (zeros past `k`), and
/// rows padded with zeros to a multiple of `unit`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_rows(a: &[f32], k: usize, depth: usize, unit: usize) -> Vec<u32> {
    use std::arch::x86_64::{__m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_storeu_si512};
    let rows = a.len() / k;
    let mut packed = vec![0u32; rows.div_ceil(unit) * unit * depth];
    for (row, out) in a.chunks_exact(k).zip(packed.chunks_exact_mut(depth)) {
        let out = &mut out[..k.div_ceil(2)];
        let mut j = 0;
        while j + 32 <= k {
            // SAFETY: 32 floats from `row[j..]`, 16 words into `out[j / 2..]`, in bounds.
            unsafe {
                let lo = _mm512_loadu_ps(row.as_ptr().add(j));
                let hi = _mm512_loadu_ps(row.as_ptr().add(j + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(out.as_mut_ptr().add(j / 2).cast(), v);
            }
            j += 32;
        }
        for (jj, w) in out.iter_mut().enumerate().skip(j / 2) {
            let lo = bf16::from_f32(row[2 * jj]).to_bits() as u32;
            let hi = row
                .get(2 * jj + 1)
                .map_or(0, |x| bf16::from_f32(*x).to_bits()) as u32;
            *w = lo | hi << 16;
        }
    }
    packed
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_rows(_: &[f32], _: usize, _: usize, _: usize) -> Vec<u32> {
    unreachable!("bf16 products run only where `available`")
}

/// One thread's rows, packed by `pack_rows` (`b.depth` words a row, rows padded to `MR`):
/// every panel against every `MR` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block(dst: &mut [f32], packed: &[u32], rows: usize, b: &Packed, accumulate: bool) {
    let (n, pairs, depth) = (b.n, b.pairs, b.depth);
    for p in 0..n.div_ceil(NR) {
        let panel = b.panel(p);
        let cols = NR.min(n - p * NR);
        for r0 in (0..rows).step_by(MR) {
            let a_rows = &packed[r0 * depth..][..MR * depth];
            let live = MR.min(rows - r0);
            let d = &mut dst[r0 * n + p * NR..];
            // SAFETY: as for `block`; the tile's rows and columns lie within `dst`.
            unsafe {
                tile(
                    d,
                    n,
                    a_rows,
                    panel,
                    (pairs, depth),
                    (live, cols),
                    accumulate,
                )
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_: &mut [f32], _: &[u32], _: usize, _: &Packed, _: bool) {
    unreachable!("bf16 products run only where `available`")
}

/// `MR` rows of packed `a` against one panel: the `live × cols` corner of the result stored
/// into `dst` (rows `dst_rs` apart).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(
    dst: &mut [f32],
    dst_rs: usize,
    a: &[u32],
    panel: &[u32],
    (pairs, depth): (usize, usize),
    (live, cols): (usize, usize),
    accumulate: bool,
) {
    use std::arch::x86_64::{
        __m512bh, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_loadu_si512, _mm512_mask_storeu_ps,
        _mm512_maskz_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for j in 0..pairs {
        // SAFETY: pair `j` of the panel is `NR` words at `j·NR`; row `i`'s word at `i·depth + j`.
        unsafe {
            let b0: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(panel.as_ptr().add(j * NR).cast()));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(panel.as_ptr().add(j * NR + 16).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.get_unchecked(i * depth + j) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
    }
    let masks = [lanes(cols.min(16)), lanes(cols.saturating_sub(16))];
    for (i, acc) in acc.iter().enumerate().take(live) {
        let row = &mut dst[i * dst_rs..];
        for (h, (v, mask)) in acc.iter().zip(masks).enumerate() {
            if mask == 0 {
                continue;
            }
            // SAFETY: the mask covers only the tile's live columns of this row.
            unsafe {
                let ptr = row.as_mut_ptr().add(16 * h);
                let v = if accumulate {
                    _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask, ptr))
                } else {
                    *v
                };
                _mm512_mask_storeu_ps(ptr, mask, v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn lanes(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}
