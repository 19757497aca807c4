//! Fused CPU kernels with hand-written backward passes, for training in f32.
//!
//! Composed from candle's primitive ops, a transformer layer allocates a fresh tensor per
//! elementwise step and keeps every one alive for the backward pass (attention scores and
//! their softmax, the [tokens, vocabulary] loss head). These ops compute the same values in
//! one pass over the data, keep only their inputs, and give candle's autograd their gradient
//! directly. They apply to f32 tensors on the CPU (`applies`); elsewhere the model uses the
//! composed ops, which are also the reference every fused op is tested against.

pub mod attention;
mod blas;
pub mod cross_entropy;
pub mod layer;
pub mod linear;
mod math;
mod matmul;
pub mod norm;
pub mod rope;
pub mod swiglu;
mod view;

use candle_core::{DType, Tensor};

/// Whether the fused kernels serve `t`: f32 on the CPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Which library computes the fused ops' matrix products: `"openblas"` where the system has
/// it, else `"gemm"`.
pub fn matmul_backend() -> &'static str {
    if blas::blas().is_some() {
        "openblas"
    } else {
        "gemm"
    }
}
