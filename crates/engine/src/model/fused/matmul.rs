//! Strided matrix products through gemm: `matmul` single-threaded, for kernels that run many
//! small products in parallel (one per head or per chunk of rows); `matmul_par` on all cores.

use gemm::Parallelism;

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

/// `dst = scale · a·b` (or `dst += scale · a·b` when `accumulate`), `dst` row-major with
/// rows `dst_rs` apart.
pub fn matmul(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    product(dst, dst_rs, a, b, scale, accumulate, Parallelism::None);
}

/// [`matmul`] on every thread of rayon's pool.
pub fn matmul_par(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let threads = rayon::current_num_threads();
    product(
        dst,
        dst_rs,
        a,
        b,
        scale,
        accumulate,
        Parallelism::Rayon(threads),
    );
}

fn product(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    scale: f32,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // The views are built from the kernels' own shapes; a mismatch is a bug in a kernel,
    // and gemm must never read or write out of bounds.
    assert!(
        b.rows == k && a.fits() && b.fits(),
        "fused matmul: bad operand view"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len(),
        "fused matmul: destination too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every index gemm touches lies within the slices, as asserted above.
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
