//! f32 products with a frozen weight held in half precision: a bf16 or f16 file's
//! projections in an f32 model (`model::load::stored_format`). The weight is widened as it is
//! packed for the micro-kernel, so each product reads it once at two bytes an element; widening
//! a tile for OpenBLAS (`fused::quantized`) wrote it at four and OpenBLAS read it again, a
//! twentieth of a 1B model's step. The sums are f32 FMAs of the exact f32 values, as a widened
//! copy's products are. AVX-512 only; elsewhere the tiles serve.

use half::{bf16, f16};
use rayon::prelude::*;

/// A frozen weight [out, in] held in half precision.
#[derive(Clone, Copy)]
pub enum Half<'a> {
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> Half<'a> {
    fn len(self) -> usize {
        match self {
            Half::Bf16(w) => w.len(),
            Half::F16(w) => w.len(),
        }
    }

    /// Elements `at..at + len`, if there are that many.
    pub fn rows(self, at: usize, len: usize) -> Option<Half<'a>> {
        Some(match self {
            Half::Bf16(w) => Half::Bf16(w.get(at..at.checked_add(len)?)?),
            Half::F16(w) => Half::F16(w.get(at..at.checked_add(len)?)?),
        })
    }
}

/// Whether this CPU runs these products.
pub fn available() -> bool {
    super::math::vector_width() == 512
}

/// Rows of the left operand per micro-tile: its MR × 2 vectors of sums stay in registers.
const MR: usize = 12;
/// Columns per micro-tile: two vectors.
const NR: usize = 32;
/// Depth per block: a micro-tile's right panel (KC × NR) stays in the L1 cache.
const KC: usize = 256;
/// Weight rows widened per block of the forward product (MC × KC f32 in the L2 cache).
const MC: usize = 96;
/// Panels of the weight widened at once for the input gradient (CHUNK × KC × NR f32 in the
/// L2 cache), so that each of its rows is read in runs of CHUNK · NR, not NR.
const CHUNK: usize = 8;

/// A pointer handed to the threads, each writing its own columns of the matrix behind it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the tasks given a `Shared` write disjoint elements (their own columns).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Runs `run` on `count` units split into one range per thread (`parallel`), or on all of
/// them on the calling thread.
fn on_tasks(count: usize, parallel: bool, run: impl Fn((usize, usize)) + Sync + Send) {
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let per = count.div_ceil(threads).max(1);
    let ranges = (0..count).step_by(per).map(|a| (a, (a + per).min(count)));
    match parallel {
        true => ranges.collect::<Vec<_>>().into_par_iter().for_each(run),
        false => ranges.for_each(run),
    }
}

/// `y += x·Wᵀ` for `x` [m, k], `y` [m, n] and `W` [n, k], on every thread (`parallel`) or on
/// the calling one. Needs [`available`].
pub fn forward(
    w: Half,
    x: &[f32],
    y: &mut [f32],
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) {
    assert!(
        available() && w.len() == n * k && x.len() == m * k && y.len() == m * n,
        "half-precision product: bad operands"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // The activations transposed into panels of NR tokens: panel p, depth d, lane l holds
    // x[p·NR + l, d] (zero past the last token). The weight's rows are then the broadcast
    // operand, widened a block at a time, and nothing of it is transposed.
    let panels = m.div_ceil(NR);
    let mut xt = vec![0.0f32; panels * k * NR];
    let transpose = |(p, panel): (usize, &mut [f32])| {
        for l in 0..NR.min(m - p * NR) {
            let row = &x[(p * NR + l) * k..][..k];
            for (d, v) in row.iter().enumerate() {
                panel[d * NR + l] = *v;
            }
        }
    };
    match parallel {
        true => xt.par_chunks_mut(k * NR).enumerate().for_each(transpose),
        false => xt.chunks_mut(k * NR).enumerate().for_each(transpose),
    }
    let out = Shared(y.as_mut_ptr());
    let blocks = n.div_ceil(MC);
    let run = |(b0, b1): (usize, usize)| {
        let mut a = vec![0.0f32; MC * KC];
        let mut sums = vec![0.0f32; MC * panels * NR];
        for block in b0..b1 {
            let (o0, rows) = (block * MC, MC.min(n - block * MC));
            // SAFETY: AVX-512 is present (asserted); the block's rows and the panels lie
            // within the operands; this task alone writes y's columns o0..o0 + rows.
            unsafe {
                forward_block(w, &xt, (m, k, n), (o0, rows), &mut a, &mut sums, out);
            }
        }
    };
    on_tasks(blocks, parallel, run);
}

/// Rows `o0..o0 + rows` of `W` against the transposed activations `xt`: their sums
/// gathered in `sums` [rows, panels · NR], then added into `y`'s columns `o0..o0 + rows`.
///
/// # Safety
/// AVX-512F; `a` holds MC × KC, `sums` MC × panels · NR; no other thread writes those columns.
#[target_feature(enable = "avx512f")]
unsafe fn forward_block(
    w: Half,
    xt: &[f32],
    (m, k, n): (usize, usize, usize),
    (o0, rows): (usize, usize),
    a: &mut [f32],
    sums: &mut [f32],
    y: Shared,
) {
    let panels = m.div_ceil(NR);
    let width = panels * NR;
    sums.fill(0.0);
    let groups = rows.div_ceil(MR);
    for d0 in (0..k).step_by(KC) {
        let kc = KC.min(k - d0);
        // The block's rows widened [rows, kc]; rows past the weight's last are zero.
        for r in 0..groups * MR {
            let dst = &mut a[r * kc..][..kc];
            match r < rows {
                // SAFETY: row o0 + r exists; the caller has AVX-512F.
                true => unsafe { widen(w, (o0 + r) * k + d0, dst) },
                false => dst.fill(0.0),
            }
        }
        for p in 0..panels {
            let b = &xt[p * k * NR + d0 * NR..][..kc * NR];
            for g in 0..groups {
                let c = &mut sums[g * MR * width + p * NR..];
                // SAFETY: `a` holds the group's MR rows of kc, `b` kc × NR, and `c` MR rows
                // of NR sums `width` apart.
                unsafe {
                    micro(
                        kc,
                        a[g * MR * kc..].as_ptr(),
                        kc,
                        b.as_ptr(),
                        c.as_mut_ptr(),
                        width,
                    )
                };
            }
        }
    }
    for t in 0..m {
        // SAFETY: row t of y has n ≥ o0 + rows columns, written by this task alone.
        let row = unsafe { std::slice::from_raw_parts_mut(y.0.add(t * n + o0), rows) };
        for (r, v) in row.iter_mut().enumerate() {
            *v += sums[r * width + t];
        }
    }
}

/// `dx += g·W` for `g` [m, n], `dx` [m, k] and `W` [n, k], threads as for [`forward`].
/// Needs [`available`].
pub fn input_gradient(
    w: Half,
    g: &[f32],
    dx: &mut [f32],
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) {
    assert!(
        available() && w.len() == n * k && g.len() == m * n && dx.len() == m * k,
        "half-precision product: bad operands"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let out = Shared(dx.as_mut_ptr());
    let run = |(p0, p1): (usize, usize)| {
        let mut b = vec![0.0f32; CHUNK * KC * NR];
        let mut a = vec![0.0f32; m.div_ceil(MR) * MR * KC];
        // SAFETY: AVX-512 is present (asserted); this task alone writes dx's columns of
        // panels p0..p1.
        unsafe { gradient_panels(w, g, (m, k, n), (p0, p1), &mut b, &mut a, out) };
    };
    on_tasks(k.div_ceil(NR), parallel, run);
}

/// `dx`'s columns of panels `p0..p1` (NR each): for each depth block of `W`'s rows, `g`'s
/// columns for it copied into `a` (rows `kc` apart: `g`'s own rows lie a multiple of 4 KiB
/// apart in real models, and twelve of them at once thrashed one set of the L1 cache), and
/// each panel of `W` widened into `b` [kc, NR] and multiplied by every MR rows of `a`.
///
/// # Safety
/// AVX-512F; `b` holds KC × NR and `a` ⌈m / MR⌉ · MR × KC; no other thread writes those
/// columns.
#[target_feature(enable = "avx512f")]
unsafe fn gradient_panels(
    w: Half,
    g: &[f32],
    (m, k, n): (usize, usize, usize),
    (p0, p1): (usize, usize),
    b: &mut [f32],
    a: &mut [f32],
    dx: Shared,
) {
    let groups = m.div_ceil(MR);
    let mut sums = [0.0f32; MR * NR];
    for o0 in (0..n).step_by(KC) {
        let kc = KC.min(n - o0);
        for t in 0..groups * MR {
            let dst = &mut a[t * kc..][..kc];
            match t < m {
                true => dst.copy_from_slice(&g[t * n + o0..][..kc]),
                false => dst.fill(0.0),
            }
        }
        for q0 in (p0..p1).step_by(CHUNK) {
            let q1 = (q0 + CHUNK).min(p1);
            // The chunk's panels widened row by row of W: each row's part read in one run.
            for d in 0..kc {
                for p in q0..q1 {
                    let (c0, cols) = (p * NR, NR.min(k - p * NR));
                    let dst = &mut b[(p - q0) * kc * NR + d * NR..][..NR];
                    // SAFETY: row o0 + d of W has k ≥ c0 + cols elements.
                    unsafe { widen(w, (o0 + d) * k + c0, &mut dst[..cols]) };
                    dst[cols..].fill(0.0);
                }
            }
            for p in q0..q1 {
                let (c0, cols) = (p * NR, NR.min(k - p * NR));
                let b = &b[(p - q0) * kc * NR..][..kc * NR];
                // SAFETY: AVX-512F (the caller's); this task alone writes these columns.
                unsafe { gradient_panel((a, kc, m), b, (c0, cols), k, &mut sums, dx) };
            }
        }
    }
}

/// dx's columns `c0..c0 + cols` += the `m` rows of `a` (`kc` apart, zero rows after them to
/// a whole MR) times one widened panel `b` [kc, NR].
///
/// # Safety
/// AVX-512F; no other thread writes those columns of dx.
#[target_feature(enable = "avx512f")]
unsafe fn gradient_panel(
    (a, kc, m): (&[f32], usize, usize),
    b: &[f32],
    (c0, cols): (usize, usize),
    k: usize,
    sums: &mut [f32; MR * NR],
    dx: Shared,
) {
    for grp in 0..m.div_ceil(MR) {
        let rows = MR.min(m - grp * MR);
        // dx's MR × NR block through `sums` (whole rows and vectors for the kernel).
        for r in 0..MR {
            let s = &mut sums[r * NR..][..NR];
            s.fill(0.0);
            if r < rows {
                // SAFETY: row grp·MR + r of dx has k ≥ c0 + cols columns.
                let src =
                    unsafe { std::slice::from_raw_parts(dx.0.add((grp * MR + r) * k + c0), cols) };
                s[..cols].copy_from_slice(src);
            }
        }
        let rows_a = a[grp * MR * kc..].as_ptr();
        // SAFETY: `a` holds the group's MR rows of kc, `b` kc × NR, sums MR × NR.
        unsafe { micro(kc, rows_a, kc, b.as_ptr(), sums.as_mut_ptr(), NR) };
        for r in 0..rows {
            // SAFETY: as above; this task alone writes these columns.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(dx.0.add((grp * MR + r) * k + c0), cols) };
            dst.copy_from_slice(&sums[r * NR..][..cols]);
        }
    }
}

/// `w[at..at + out.len()]` widened into `out`: `math::widen_bf16_into` written inline, since
/// the packing loops call it on runs of 32 values and a dispatched call per run would cost
/// more than the widening.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn widen(w: Half, at: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = out.len();
    let whole = len / 16 * 16;
    match w {
        Half::Bf16(w) => {
            let src = &w[at..at + len];
            for i in (0..whole).step_by(16) {
                // SAFETY: 16 elements at i lie in both slices.
                unsafe {
                    let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
                    let v = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
                    _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_castsi512_ps(v));
                }
            }
            for i in whole..len {
                out[i] = src[i].to_f32();
            }
        }
        Half::F16(w) => {
            let src = &w[at..at + len];
            for i in (0..whole).step_by(16) {
                // SAFETY: as above.
                unsafe {
                    let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
                    _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
                }
            }
            for i in whole..len {
                out[i] = src[i].to_f32();
            }
        }
    }
}

/// `c[r][0..NR] += Σ_d a[r·lda + d] · b[d·NR..][..NR]` for `r < MR`, `d < kc`; c's rows `ldc`
/// apart.
///
/// # Safety
/// AVX-512F; `a` covers MR rows of `kc` `lda` apart, `b` kc × NR, `c` MR rows of NR.
#[target_feature(enable = "avx512f")]
unsafe fn micro(kc: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the extents are the caller's.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (r, sums) in acc.iter_mut().enumerate() {
            sums[0] = _mm512_loadu_ps(c.add(r * ldc));
            sums[1] = _mm512_loadu_ps(c.add(r * ldc + 16));
        }
        // Four depths a round: the row pointers and the loop's count are read once per four.
        let rows: [*const f32; MR] = std::array::from_fn(|r| a.add(r * lda));
        let step = |d: usize, acc: &mut [[__m512; 2]; MR]| {
            let b0 = _mm512_loadu_ps(b.add(d * NR));
            let b1 = _mm512_loadu_ps(b.add(d * NR + 16));
            for (row, sums) in rows.iter().zip(acc.iter_mut()) {
                let v = _mm512_set1_ps(*row.add(d));
                sums[0] = _mm512_fmadd_ps(v, b0, sums[0]);
                sums[1] = _mm512_fmadd_ps(v, b1, sums[1]);
            }
        };
        let whole = kc / 4 * 4;
        for d in (0..whole).step_by(4) {
            step(d, &mut acc);
            step(d + 1, &mut acc);
            step(d + 2, &mut acc);
            step(d + 3, &mut acc);
        }
        for d in whole..kc {
            step(d, &mut acc);
        }
        for (r, sums) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), sums[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), sums[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The products against f64 sums of the same operands, at shapes with every edge: tokens
    /// not a multiple of MR or NR, widths not of NR or 16, depths past one block.
    #[test]
    fn products_equal_f64_sums() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut seed = 7u64;
        let mut rand = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (m, k, n) in [(1, 16, 1), (13, 40, 100), (45, 300, 97), (33, 530, 270)] {
            let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(rand())).collect();
            let wh: Vec<f16> = w.iter().map(|v| f16::from_f32(v.to_f32())).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rand()).collect();
            let g: Vec<f32> = (0..m * n).map(|_| rand()).collect();
            let y0: Vec<f32> = (0..m * n).map(|_| rand()).collect();
            let dx0: Vec<f32> = (0..m * k).map(|_| rand()).collect();
            let wf = |o: usize, d: usize| f64::from(w[o * k + d].to_f32());
            for (half, parallel) in [(Half::Bf16(&w), false), (Half::F16(&wh), true)] {
                let mut y = y0.clone();
                forward(half, &x, &mut y, (m, k, n), parallel);
                for t in 0..m {
                    for o in 0..n {
                        let want = f64::from(y0[t * n + o])
                            + (0..k)
                                .map(|d| f64::from(x[t * k + d]) * wf(o, d))
                                .sum::<f64>();
                        let got = f64::from(y[t * n + o]);
                        assert!(
                            (got - want).abs() < 1e-4,
                            "forward {m}x{k}x{n} [{t},{o}]: {got} vs {want}"
                        );
                    }
                }
                let mut dx = dx0.clone();
                input_gradient(half, &g, &mut dx, (m, k, n), parallel);
                for t in 0..m {
                    for d in 0..k {
                        let want = f64::from(dx0[t * k + d])
                            + (0..n)
                                .map(|o| f64::from(g[t * n + o]) * wf(o, d))
                                .sum::<f64>();
                        let got = f64::from(dx[t * k + d]);
                        assert!(
                            (got - want).abs() < 1e-4,
                            "gradient {m}x{k}x{n} [{t},{d}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
