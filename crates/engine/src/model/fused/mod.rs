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
pub mod decode;
pub mod layer;
pub mod linear;
pub(crate) mod math;
mod matmul;
pub mod norm;
mod quantized;
pub mod rates;
pub mod rope;
mod spare;
pub mod swiglu;
mod timing;
pub(crate) mod view;
mod weight;
mod widening;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// Which kernels compute a decoder layer, from `PEFT_STUDIO_FUSED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fused CPU kernels on the CPU, the device-generic layer elsewhere (the default).
    Cpu,
    /// The device-generic layer on every device, the CPU included (`generic`: how the
    /// tests prove on the CPU what a GPU runs), with the CPU-only kernels refused.
    Generic,
    /// candle's composed ops everywhere (`off`): the reference.
    Composed,
}

/// The kernels this process uses (read once).
pub fn kernels() -> Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    *KERNELS.get_or_init(|| match std::env::var("PEFT_STUDIO_FUSED").as_deref() {
        Ok("off") => Kernels::Composed,
        Ok("generic") => Kernels::Generic,
        _ => Kernels::Cpu,
    })
}

/// Whether the fused CPU kernels serve `t`: f32, bf16 or f16 on the CPU, unless
/// `PEFT_STUDIO_FUSED` is `off` or `generic`.
pub fn applies(t: &Tensor) -> bool {
    kernels() == Kernels::Cpu
        && t.device().is_cpu()
        && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
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
