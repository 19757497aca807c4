//! OpenBLAS's `cblas_sgemm`, loaded at run time where the system has it (`libopenblas.so.0`:
//! Debian and Ubuntu's `libopenblas0`). On the studio's shapes it runs 15–25% faster than
//! gemm's AVX2 kernels (docs/BENCHMARKS.md); where it is missing, or
//! `PEFT_STUDIO_BLAS=off`, products go through gemm. Loaded single-threaded: the studio
//! splits products across its own threads, so OpenBLAS's pool never competes with them.

use std::ffi::c_int;
use std::sync::OnceLock;

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// The loaded library (kept open for the process's life) and its sgemm.
pub struct Blas {
    _lib: libloading::Library,
    sgemm: Sgemm,
}

/// An operand as CBLAS takes it: row-major data, transposed or not, and its leading dimension.
#[derive(Clone, Copy)]
pub struct Operand {
    pub ptr: *const f32,
    pub transposed: bool,
    pub ld: usize,
}

impl Blas {
    /// `c = alpha·a·b + beta·c` for `c` [m, n] row-major with rows `ldc` apart.
    ///
    /// # Safety
    /// Every operand must cover its `m × k`, `k × n` and `m × n` elements at the strides given.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: Operand,
        b: Operand,
        beta: f32,
        c: *mut f32,
        ldc: usize,
    ) {
        let flag = |t: bool| if t { TRANS } else { NO_TRANS };
        // SAFETY: the caller guarantees the operands' extents.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                flag(a.transposed),
                flag(b.transposed),
                m as c_int,
                n as c_int,
                k as c_int,
                alpha,
                a.ptr,
                a.ld as c_int,
                b.ptr,
                b.ld as c_int,
                beta,
                c,
                ldc as c_int,
            );
        }
    }
}

/// OpenBLAS, when present and not switched off.
pub fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(load).as_ref()
}

fn load() -> Option<Blas> {
    if std::env::var("PEFT_STUDIO_BLAS").is_ok_and(|v| v == "off") {
        return None;
    }
    // SAFETY: loading a system library runs its initialisers; OpenBLAS's are benign.
    let lib = unsafe { libloading::Library::new("libopenblas.so.0") }.ok()?;
    // SAFETY: the symbols have these C signatures in every OpenBLAS release.
    unsafe {
        let threads = lib
            .get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0")
            .ok()?;
        threads(1);
        let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
        Some(Blas { _lib: lib, sgemm })
    }
}
