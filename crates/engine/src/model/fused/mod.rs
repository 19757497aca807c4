//! Fused CPU kernels with hand-written backward passes, for training in f32.
//!
//! Composed from candle's primitive ops, a transformer layer allocates a fresh tensor per
//! elementwise step and keeps every one alive for the backward pass (attention scores and
//! their softmax, the [tokens, vocabulary] loss head). These ops compute the same values in
//! one pass over the data, keep only their inputs, and give candle's autograd their gradient
//! directly. They apply to CPU tensors (`applies`) and compute in f32: a bf16 or f16 model's
//! tensors are widened as the kernels read them and results narrowed back (`view`), which
//! keeps half precision's memory without candle's slow half-precision CPU products.
//! Elsewhere the model uses the composed ops, which are also the reference every fused op is
//! tested against.

mod amx;
pub mod attention;
pub mod bf16_matmul;
mod blas;
pub mod cross_entropy;
pub mod layer;
pub mod linear;
mod math;
mod matmul;
pub mod norm;
pub mod rates;
pub mod rope;
pub mod swiglu;
pub(crate) mod view;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// Whether the fused kernels serve `t`: f32, bf16 or f16 on the CPU, unless
/// `PEFT_STUDIO_FUSED=off` (the composed ops everywhere, as on a GPU: for tests and
/// comparisons).
pub fn applies(t: &Tensor) -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("PEFT_STUDIO_FUSED").is_ok_and(|v| v == "off"));
    !off && t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
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
