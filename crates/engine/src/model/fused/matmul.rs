//! Strided matrix products through gemm: `matmul` single-threaded, for kernels that run many
//! small products in parallel (one per head or per chunk of rows); `matmul_par` on all cores.

use gemm::Parallelism;
use rayon::prelude::*;

use super::blas::{blas, Blas, Operand};

/// A read-only matrix view: `rows × cols` with element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major rows of `cols` elements, each `rs` apart (`rs = cols` when packed).
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

impl Mat<'_> {
    /// The view as a CBLAS operand, when one of its strides is 1.
    fn operand(&self) -> Option<Operand> {
        let ptr = self.data.as_ptr();
        if self.cs == 1 {
            Some(Operand {
                ptr,
                transposed: false,
                ld: self.rs.max(self.cols).max(1),
            })
        } else if self.rs == 1 {
            Some(Operand {
                ptr,
                transposed: true,
                ld: self.cs.max(self.rows).max(1),
            })
        } else {
            None
        }
    }

    /// Rows `r0..r0 + n` of the view.
    fn row_block(&self, r0: usize, n: usize) -> Self {
        Self {
            data: &self.data[r0 * self.rs..],
            rows: n,
            ..*self
        }
    }

    /// Columns `c0..c0 + n` of the view.
    fn col_block(&self, c0: usize, n: usize) -> Self {
        Self {
            data: &self.data[c0 * self.cs..],
            cols: n,
            ..*self
        }
    }
}

/// `dst = scale · a·b` (or `dst += scale · a·b` when `accumulate`), `dst` row-major with
/// rows `dst_rs` apart. Into a freshly zeroed `dst`, pass `accumulate`: OpenBLAS otherwise
/// spends a pass zeroing `dst` itself before it accumulates.
pub fn matmul(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    check(dst, dst_rs, a, b);
    serial(dst, dst_rs, a, b, scale, accumulate);
}

/// [`matmul`] on every thread of rayon's pool.
pub fn matmul_par(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    check(dst, dst_rs, a, b);
    let threads = rayon::current_num_threads();
    let (m, n) = (a.rows, b.cols);
    if blas().is_none() {
        let parallelism = Parallelism::Rayon(threads);
        return gemm_product(dst, dst_rs, a, b, scale, accumulate, parallelism);
    }
    // Each thread packs the whole operand it does not split, so the larger side is split:
    // a few hundred tokens against thousands of a weight's outputs split the weight, which is
    // then packed once in all rather than once per thread (at 3B, 256 tokens, splitting rows
    // left the step at 0.80× PyTorch's).
    if n > m && n >= 2 * threads * COLUMN_UNIT {
        if let (Some(blas), Some(_), Some(_), true) = (blas(), a.operand(), b.operand(), a.cols > 0)
        {
            return by_columns(blas, dst, dst_rs, a, b, scale, accumulate, threads);
        }
    }
    if m < 2 * threads || n == 0 {
        return serial(dst, dst_rs, a, b, scale, accumulate);
    }
    // One block of rows per thread, each a serial product into its own rows of `dst`.
    let per = m.div_ceil(threads);
    let used = (m - 1) * dst_rs + n;
    dst[..used]
        .par_chunks_mut(per * dst_rs)
        .enumerate()
        .for_each(|(i, block)| {
            let r0 = i * per;
            let rows = per.min(m - r0);
            serial(block, dst_rs, a.row_block(r0, rows), b, scale, accumulate);
        });
}

/// Columns of a split product per thread come in multiples of this: whole vectors.
const COLUMN_UNIT: usize = 16;

/// A destination written by several threads, each in its own columns.
#[derive(Clone, Copy)]
struct Columns(*mut f32);
// SAFETY: `by_columns` gives each thread a disjoint range of columns.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

/// [`matmul_par`] with `b`'s columns (and `dst`'s) split across the threads: every thread
/// multiplies all of `a` by its own columns of `b` through OpenBLAS. Both views must have a
/// unit stride ([`Mat::operand`]); a column block keeps `b`'s.
#[allow(clippy::too_many_arguments)]
fn by_columns(
    blas: &Blas,
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let per = n.div_ceil(threads).next_multiple_of(COLUMN_UNIT);
    let out = Columns(dst.as_mut_ptr());
    let beta = if accumulate { 1.0 } else { 0.0 };
    (0..n.div_ceil(per)).into_par_iter().for_each(|i| {
        let (c0, out) = (i * per, out);
        let cols = per.min(n - c0);
        if let (Some(ao), Some(bo)) = (a.operand(), b.col_block(c0, cols).operand()) {
            // SAFETY: `check` established that `dst` holds `m` rows of `n` columns `dst_rs`
            // apart and that `a` and `b` cover their extents; this thread writes columns
            // `c0..c0 + cols` of those rows only, which no other thread writes.
            unsafe {
                blas.sgemm(
                    (m, cols, k),
                    scale,
                    ao,
                    bo,
                    beta,
                    out.0.add(c0),
                    dst_rs.max(n),
                )
            };
        }
    });
}

/// `dst += a·b` on every thread of rayon's pool (`parallel`) or on the calling one.
pub fn add_product(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, parallel: bool) {
    match parallel {
        true => matmul_par(dst, dst_rs, a, b, 1.0, true),
        false => matmul(dst, dst_rs, a, b, 1.0, true),
    }
}

/// The views are built from the kernels' own shapes; a mismatch is a bug in a kernel, and
/// neither BLAS nor gemm may ever read or write out of bounds.
fn check(dst: &[f32], dst_rs: usize, a: Mat, b: Mat) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && a.fits() && b.fits(),
        "fused matmul: bad operand view"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len(),
        "fused matmul: destination too small"
    );
}

/// One product on the calling thread: OpenBLAS when loaded, else gemm.
fn serial(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if let (Some(blas), Some(ao), Some(bo), true) = (blas(), a.operand(), b.operand(), k > 0) {
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: `check` established the operands' and the destination's extents.
        unsafe {
            blas.sgemm(
                (m, n, k),
                scale,
                ao,
                bo,
                beta,
                dst.as_mut_ptr(),
                dst_rs.max(n),
            )
        };
        return;
    }
    gemm_product(dst, dst_rs, a, b, scale, accumulate, Parallelism::None);
}

fn gemm_product(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every index gemm touches lies within the slices, as `check` asserted.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products on all threads, rows split and columns split (a few rows against many
    /// columns, as tokens meet a weight's outputs), equal f64 products: `x·Wᵀ` and `g·W`,
    /// into a destination wider than the product, accumulating and not, column counts that
    /// split unevenly.
    #[test]
    fn split_products_equal_f64_products() {
        let value =
            |i: usize, seed: usize| ((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 - 0.5;
        for (m, k, n) in [
            (5, 64, 300),
            (16, 33, 1000),
            (40, 128, 97),
            (300, 50, 70),
            (1, 8, 64),
        ] {
            for transposed in [true, false] {
                for accumulate in [true, false] {
                    let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
                    let w: Vec<f32> = (0..n * k).map(|i| value(i, 2)).collect();
                    // `W` as [n, k] read transposed, or as [k, n].
                    let b = match transposed {
                        true => Mat::rows(&w, n, k, k).t(),
                        false => Mat::rows(&w, k, n, n),
                    };
                    let at = |p: usize, j: usize| match transposed {
                        true => w[j * k + p],
                        false => w[p * n + j],
                    } as f64;
                    let ld = n + 3;
                    let mut dst = vec![0.25f32; m * ld];
                    matmul_par(&mut dst, ld, Mat::rows(&a, m, k, k), b, 2.0, accumulate);
                    for i in 0..m {
                        for j in 0..ld {
                            let got = dst[i * ld + j] as f64;
                            let want = if j >= n {
                                0.25
                            } else {
                                let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * at(p, j)).sum();
                                2.0 * dot + if accumulate { 0.25 } else { 0.0 }
                            };
                            assert!(
                                (got - want).abs() < 1e-4,
                                "{m}x{k}x{n} transposed={transposed} accumulate={accumulate} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
