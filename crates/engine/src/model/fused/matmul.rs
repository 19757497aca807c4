//! Strided matrix products through gemm: `matmul` single-threaded, for kernels that run many
//! small products in parallel (one per head or per chunk of rows); `matmul_par` on all cores.

use gemm::Parallelism;
use rayon::prelude::*;

use super::blas::{blas, Operand};

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
