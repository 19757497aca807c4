//! Softmax's inner loops written so the compiler vectorises them: libm's `expf` is called
//! one value at a time, and a single running sum serialises on the adder's latency.

use std::mem::MaybeUninit;

use half::{bf16, f16};

/// Defines a function whose body is compiled three times — for AVX-512, for AVX2 + FMA and
/// for the x86-64 baseline — and runs the widest this CPU has, so that its elementwise loops
/// are vectorised 16 (8) lanes wide instead of the baseline's 4. The body is an
/// `#[inline(always)]` function, so each copy really holds it (a closure handed to a
/// target-feature function was often left a baseline call). Results are the same bits on
/// every width: the compiler neither reassociates nor fuses float operations.
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn on_avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn on_avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                // SAFETY: each runs only where the CPU has the features it was compiled for.
                match $crate::model::fused::math::vector_width() {
                    512 => return unsafe { on_avx512($($arg),*) },
                    256 => return unsafe { on_avx2($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(super) use vectorised;

/// The widest vectors [`vectorised`] functions run on here: 512, 256 or 128 bits.
pub fn vector_width() -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        static WIDTH: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        *WIDTH.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f") {
                512
            } else if has_fma() {
                256
            } else {
                128
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    128
}

vectorised! {
    /// A softmax over `row[first..visible]`, zeros elsewhere (outside a window or past the
    /// causal edge: zero probabilities also zero their gradients).
    pub fn softmax_row(row: &mut [f32], first: usize, visible: usize) {
        let (row, masked) = row.split_at_mut(visible);
        let (before, live) = row.split_at_mut(first);
        before.fill(0.0);
        let max = max(live);
        exp_shifted(live, max);
        let inv = 1.0 / sum(live);
        live.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
    }
}

/// `e^x` for `x ≤ 0` (arguments minus their row's maximum), to within 2 ulp; values below
/// −87 give ~1e−38 instead of underflowing.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r on [−ln2/2, ln2/2]: Taylor terms to r⁶ (error < 2e−8 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ built in the exponent bits; n ∈ [−126, 0] here.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The logistic function `1 / (1 + e^−x)`, through `exp_nonpositive` on either side of 0.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// `tanh(x) = 2σ(2x) − 1`, vectorisable (libm's `tanhf` is one call per value); within
/// 1e−7 absolutely.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

/// `x ← e^(x − shift)` for every element (`shift` at least every element: the row maximum).
#[inline(always)]
pub fn exp_shifted(xs: &mut [f32], shift: f32) {
    for x in xs.iter_mut() {
        *x = exp_nonpositive(*x - shift);
    }
}

/// The maximum of a row (−∞ for an empty one).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.max(*x);
        }
    }
    tail.iter()
        .chain(&acc)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of a row, in eight interleaved partial sums.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `Σ a[i]·b[i]` in sixteen interleaved partial sums, `b` widened to f32 by `widen`; with
/// fused multiply-adds where the caller's target features allow them (`fma`).
#[inline(always)]
fn dot_with<T: Copy>(a: &[f32], b: &[T], widen: impl Fn(T) -> f32, fma: bool) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * widen(*y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            let p = widen(y[i]);
            acc[i] = if fma {
                x[i].mul_add(p, acc[i])
            } else {
                acc[i] + x[i] * p
            };
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`dot_with`] of `R` rows against one `b`, each row's sums formed exactly as `dot_with`
/// forms them (the same lanes, in the same order): bitwise the same results, with `b` read
/// once and `R` independent chains of multiply-adds in flight instead of one.
#[inline(always)]
fn dots_with<T: Copy, const R: usize>(
    xs: [&[f32]; R],
    b: &[T],
    widen: impl Fn(T) -> f32,
    fma: bool,
) -> [f32; R] {
    let whole = b.len() / 16 * 16;
    let mut acc = [[0.0f32; 16]; R];
    for c in (0..whole).step_by(16) {
        let w: [f32; 16] = std::array::from_fn(|i| widen(b[c + i]));
        for (acc, x) in acc.iter_mut().zip(&xs) {
            let x = &x[c..c + 16];
            for i in 0..16 {
                acc[i] = if fma {
                    x[i].mul_add(w[i], acc[i])
                } else {
                    acc[i] + x[i] * w[i]
                };
            }
        }
    }
    std::array::from_fn(|r| {
        let tail: f32 = xs[r][whole..]
            .iter()
            .zip(&b[whole..])
            .map(|(x, y)| x * widen(*y))
            .sum();
        acc[r].iter().sum::<f32>() + tail
    })
}

/// Rows [`dots`] takes together.
pub const DOT_GROUP: usize = 4;

/// [`dots_with`] with AVX2's fused multiply-adds written out (the compiler does not vectorise
/// the generic form across rows): each row's two eight-lane accumulators are `dot_with`'s
/// sixteen sums, summed the same way at the end. `load` gives 8 elements of `b` as f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2<T: Copy>(
    xs: [&[f32]; DOT_GROUP],
    b: &[T],
    load: impl Fn(*const T) -> std::arch::x86_64::__m256,
    widen: impl Fn(T) -> f32,
) -> [f32; DOT_GROUP] {
    use std::arch::x86_64::*;
    // SAFETY: the caller enabled AVX2 and FMA and gives rows as long as `b`: every load
    // and store below stays inside its slice.
    unsafe {
        let n = b.len();
        let whole = n / 16 * 16;
        let [x0, x1, x2, x3] = xs.map(<[f32]>::as_ptr);
        // Eight named accumulators (two per row) stay in registers; an array of them did not.
        let z = _mm256_setzero_ps();
        let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2, mut a3, mut b3) =
            (z, z, z, z, z, z, z, z);
        let mut c = 0;
        while c < whole {
            let (w0, w1) = (load(b.as_ptr().add(c)), load(b.as_ptr().add(c + 8)));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0.add(c)), w0, a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0.add(c + 8)), w1, b0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1.add(c)), w0, a1);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1.add(c + 8)), w1, b1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2.add(c)), w0, a2);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2.add(c + 8)), w1, b2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3.add(c)), w0, a3);
            b3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3.add(c + 8)), w1, b3);
            c += 16;
        }
        let acc = [[a0, b0], [a1, b1], [a2, b2], [a3, b3]];
        std::array::from_fn(|r| {
            let mut lanes = [0.0f32; 16];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[r][1]);
            let tail: f32 = xs[r][whole..n]
                .iter()
                .zip(&b[whole..])
                .map(|(x, y)| x * widen(*y))
                .sum();
            lanes.iter().sum::<f32>() + tail
        })
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_fma(xs: [&[f32]; DOT_GROUP], b: &[f32]) -> [f32; DOT_GROUP] {
    // SAFETY: AVX2 and FMA are enabled here; every row is as long as `b` (checked by the
    // caller), so the loads stay inside the slices.
    unsafe { dots_avx2(xs, b, |p| std::arch::x86_64::_mm256_loadu_ps(p), |v| v) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_bf16_fma(xs: [&[f32]; DOT_GROUP], b: &[half::bf16]) -> [f32; DOT_GROUP] {
    use std::arch::x86_64::*;
    // bf16 bits shifted into the top half of each f32 lane.
    let load = |p: *const half::bf16| {
        // SAFETY: AVX2 is enabled here; `p` points at 8 elements inside `b`.
        unsafe {
            let bits = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16))
        }
    };
    // SAFETY: as in `dots_fma`.
    unsafe { dots_avx2(xs, b, load, widen_bf16) }
}

/// [`dot`] of [`DOT_GROUP`] rows against `b`, each bitwise equal to its own [`dot`].
pub fn dots(xs: [&[f32]; DOT_GROUP], b: &[f32]) -> [f32; DOT_GROUP] {
    #[cfg(target_arch = "x86_64")]
    if has_fma() && xs.iter().all(|x| x.len() == b.len()) {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { dots_fma(xs, b) };
    }
    dots_with(xs, b, |v| v, false)
}

/// [`dots`] with `b` in bf16, each bitwise equal to its own [`dot_bf16`].
pub fn dots_bf16(xs: [&[f32]; DOT_GROUP], b: &[half::bf16]) -> [f32; DOT_GROUP] {
    #[cfg(target_arch = "x86_64")]
    if has_fma() && xs.iter().all(|x| x.len() == b.len()) {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { dots_bf16_fma(xs, b) };
    }
    dots_with(xs, b, widen_bf16, false)
}

/// Weight rows [`dots_pair`] takes together (with [`DOT_GROUP`] rows of activations).
pub const DOT_PAIR: usize = 2;

#[cfg(target_arch = "x86_64")]
fn has_avx512vl() -> bool {
    static VL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VL.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && has_fma()
    })
}

/// `dot(xs[r], ws[k])` for two weight rows against four activation rows with AVX2's
/// operations on AVX-512's 32 registers: sixteen accumulators (two per product, `dot_with`'s
/// sixteen sums lane for lane, so every result is bitwise its own `dot`), each weight load
/// serving four products and each activation load two.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
unsafe fn pair_vl<T: Copy>(
    xs: [&[f32]; DOT_GROUP],
    ws: [&[T]; DOT_PAIR],
    load: impl Fn(*const T) -> std::arch::x86_64::__m256,
    widen: impl Fn(T) -> f32,
) -> [[f32; DOT_GROUP]; DOT_PAIR] {
    use std::arch::x86_64::*;
    // SAFETY: the caller enabled these features and gives rows all as long as the weight
    // rows: every load and store below stays inside its slice.
    unsafe {
        let n = ws[0].len();
        let whole = n / 16 * 16;
        let [x0, x1, x2, x3] = xs.map(<[f32]>::as_ptr);
        let [p, q] = ws.map(<[T]>::as_ptr);
        let z = _mm256_setzero_ps();
        let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2, mut a3, mut b3) =
            (z, z, z, z, z, z, z, z);
        let (mut c0, mut d0, mut c1, mut d1, mut c2, mut d2, mut c3, mut d3) =
            (z, z, z, z, z, z, z, z);
        let mut i = 0;
        while i < whole {
            let (p0, p1, q0, q1) = (
                load(p.add(i)),
                load(p.add(i + 8)),
                load(q.add(i)),
                load(q.add(i + 8)),
            );
            let (u, v) = (_mm256_loadu_ps(x0.add(i)), _mm256_loadu_ps(x0.add(i + 8)));
            a0 = _mm256_fmadd_ps(u, p0, a0);
            b0 = _mm256_fmadd_ps(v, p1, b0);
            c0 = _mm256_fmadd_ps(u, q0, c0);
            d0 = _mm256_fmadd_ps(v, q1, d0);
            let (u, v) = (_mm256_loadu_ps(x1.add(i)), _mm256_loadu_ps(x1.add(i + 8)));
            a1 = _mm256_fmadd_ps(u, p0, a1);
            b1 = _mm256_fmadd_ps(v, p1, b1);
            c1 = _mm256_fmadd_ps(u, q0, c1);
            d1 = _mm256_fmadd_ps(v, q1, d1);
            let (u, v) = (_mm256_loadu_ps(x2.add(i)), _mm256_loadu_ps(x2.add(i + 8)));
            a2 = _mm256_fmadd_ps(u, p0, a2);
            b2 = _mm256_fmadd_ps(v, p1, b2);
            c2 = _mm256_fmadd_ps(u, q0, c2);
            d2 = _mm256_fmadd_ps(v, q1, d2);
            let (u, v) = (_mm256_loadu_ps(x3.add(i)), _mm256_loadu_ps(x3.add(i + 8)));
            a3 = _mm256_fmadd_ps(u, p0, a3);
            b3 = _mm256_fmadd_ps(v, p1, b3);
            c3 = _mm256_fmadd_ps(u, q0, c3);
            d3 = _mm256_fmadd_ps(v, q1, d3);
            i += 16;
        }
        let acc = [
            [[a0, b0], [a1, b1], [a2, b2], [a3, b3]],
            [[c0, d0], [c1, d1], [c2, d2], [c3, d3]],
        ];
        std::array::from_fn(|k| {
            std::array::from_fn(|r| {
                let mut lanes = [0.0f32; 16];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k][r][0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[k][r][1]);
                let tail: f32 = xs[r][whole..n]
                    .iter()
                    .zip(&ws[k][whole..])
                    .map(|(x, y)| x * widen(*y))
                    .sum();
                lanes.iter().sum::<f32>() + tail
            })
        })
    }
}

/// [`dot`] of each of two weight rows with each of [`DOT_GROUP`] activation rows
/// (`[weight row][activation row]`), each bitwise its own [`dot`]; `None` where the CPU lacks
/// AVX-512VL (the caller takes [`dots`] per weight row).
pub fn dots_pair(
    xs: [&[f32]; DOT_GROUP],
    ws: [&[f32]; DOT_PAIR],
) -> Option<[[f32; DOT_GROUP]; DOT_PAIR]> {
    #[cfg(target_arch = "x86_64")]
    if has_avx512vl() && xs.iter().chain(&ws).all(|r| r.len() == ws[0].len()) {
        // SAFETY: the CPU has the features (checked above); every row has the same length.
        return Some(unsafe { pair_vl(xs, ws, |p| std::arch::x86_64::_mm256_loadu_ps(p), |v| v) });
    }
    None
}

/// [`dots_pair`] with bf16 weight rows, each bitwise its own [`dot_bf16`].
pub fn dots_pair_bf16(
    xs: [&[f32]; DOT_GROUP],
    ws: [&[half::bf16]; DOT_PAIR],
) -> Option<[[f32; DOT_GROUP]; DOT_PAIR]> {
    #[cfg(target_arch = "x86_64")]
    if has_avx512vl()
        && xs.iter().all(|r| r.len() == ws[0].len())
        && ws.iter().all(|w| w.len() == ws[0].len())
    {
        use std::arch::x86_64::*;
        let load = |p: *const half::bf16| {
            // SAFETY: called by `pair_vl` (AVX2 on) with 8 elements at `p`.
            unsafe {
                let bits = _mm_loadu_si128(p.cast());
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16))
            }
        };
        // SAFETY: as in `dots_pair`.
        return Some(unsafe { pair_vl(xs, ws, load, widen_bf16) });
    }
    None
}

/// bf16 bits to f32: the bits shifted into place (what the compiler vectorises).
#[inline(always)]
fn widen_bf16(b: half::bf16) -> f32 {
    f32::from_bits(u32::from(b.to_bits()) << 16)
}

#[cfg(target_arch = "x86_64")]
fn has_fma() -> bool {
    static FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FMA.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |v| v, true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_bf16_fma(a: &[f32], b: &[half::bf16]) -> f32 {
    dot_with(a, b, widen_bf16, true)
}

/// The dot product of two rows of equal length (a decode-shaped product's inner loop).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { dot_fma(a, b) };
    }
    dot_with(a, b, |v| v, false)
}

/// [`dot`] with the second row in bf16.
pub fn dot_bf16(a: &[f32], b: &[half::bf16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { dot_bf16_fma(a, b) };
    }
    dot_with(a, b, widen_bf16, false)
}

vectorised! {
    /// `src` widened into `out` (as long).
    pub(crate) fn bf16_to_f32(out: &mut [MaybeUninit<f32>], src: &[bf16]) {
        for (o, s) in out.iter_mut().zip(src) {
            o.write(s.to_f32());
        }
    }
}

vectorised! {
    /// [`bf16_to_f32`] for f16.
    pub(crate) fn f16_to_f32(out: &mut [MaybeUninit<f32>], src: &[f16]) {
        for (o, s) in out.iter_mut().zip(src) {
            o.write(s.to_f32());
        }
    }
}

/// `src` widened into `out` (as long), on vectors: rows of a bf16 weight an f32 model holds.
pub(crate) fn widen_bf16_into(src: &[bf16], out: &mut [f32]) {
    bf16_to_f32(uninit(out), src)
}

/// [`widen_bf16_into`] for f16.
pub(crate) fn widen_f16_into(src: &[f16], out: &mut [f32]) {
    f16_to_f32(uninit(out), src)
}

fn uninit(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has f32's layout, and the callers write only initialised
    // values through it.
    unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_dot_products_equal_single_ones_bitwise() {
        for n in [5, 16, 37, 64, 129, 576] {
            let row = |seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * 7 + seed * 13) as f32 * 0.37).sin())
                    .collect()
            };
            let xrows: Vec<Vec<f32>> = (0..4).map(row).collect();
            let wrows: Vec<Vec<f32>> = (4..6).map(row).collect();
            let hw: Vec<Vec<half::bf16>> = wrows
                .iter()
                .map(|w| w.iter().map(|&v| half::bf16::from_f32(v)).collect())
                .collect();
            let xs: [&[f32]; DOT_GROUP] = std::array::from_fn(|r| xrows[r].as_slice());
            let ws: [&[f32]; DOT_PAIR] = std::array::from_fn(|k| wrows[k].as_slice());
            let hs: [&[half::bf16]; DOT_PAIR] = std::array::from_fn(|k| hw[k].as_slice());
            let Some(got) = dots_pair(xs, ws) else {
                eprintln!("skipped: this CPU has no AVX-512VL");
                return;
            };
            let got_bf16 = dots_pair_bf16(xs, hs).expect("AVX-512VL");
            for k in 0..DOT_PAIR {
                for r in 0..DOT_GROUP {
                    assert_eq!(
                        got[k][r].to_bits(),
                        dot(xs[r], ws[k]).to_bits(),
                        "n={n} {k},{r}"
                    );
                    assert_eq!(
                        got_bf16[k][r].to_bits(),
                        dot_bf16(xs[r], hs[k]).to_bits(),
                        "n={n} {k},{r}"
                    );
                }
            }
        }
    }

    #[test]
    fn grouped_dot_products_equal_single_ones_bitwise() {
        for n in [5, 16, 37, 64, 129] {
            let rows: Vec<Vec<f32>> = (0..DOT_GROUP)
                .map(|r| {
                    (0..n)
                        .map(|i| ((i * 7 + r * 13) as f32 * 0.37).sin())
                        .collect()
                })
                .collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let hb: Vec<half::bf16> = b.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let xs: [&[f32]; DOT_GROUP] = std::array::from_fn(|r| rows[r].as_slice());
            let (got, got_bf16) = (dots(xs, &b), dots_bf16(xs, &hb));
            for r in 0..DOT_GROUP {
                assert_eq!(got[r].to_bits(), dot(xs[r], &b).to_bits(), "n={n} row {r}");
                assert_eq!(
                    got_bf16[r].to_bits(),
                    dot_bf16(xs[r], &hb).to_bits(),
                    "n={n} row {r}"
                );
            }
        }
    }

    #[test]
    fn dot_products_equal_plain_sums() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((f64::from(dot(&a, &b)) - exact).abs() < 1e-5);
        let b16: Vec<half::bf16> = b.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let exact16: f64 = a
            .iter()
            .zip(&b16)
            .map(|(x, y)| f64::from(*x) * f64::from(y.to_f32()))
            .sum();
        assert!((f64::from(dot_bf16(&a, &b16)) - exact16).abs() < 1e-5);
    }

    #[test]
    fn exp_matches_f64_across_its_range() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let mut v = [x];
            exp_shifted(&mut v, 0.0);
            let exact = (x as f64).exp();
            worst = worst.max((v[0] as f64 - exact).abs() / exact);
        }
        assert!(worst < 1e-6, "worst relative error {worst:e}");
    }

    #[test]
    fn tanh_matches_f64_on_both_sides() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            assert!(
                (tanh(x) as f64 - (x as f64).tanh()).abs() < 2e-7,
                "tanh({x})"
            );
        }
    }

    #[test]
    fn sigmoid_matches_f64_on_both_sides() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - exact).abs() < 1e-6, "sigmoid({x})");
        }
    }

    #[test]
    fn max_and_sum_cover_the_tail() {
        let xs: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(max(&xs), 18.0);
        assert_eq!(sum(&xs), 171.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
