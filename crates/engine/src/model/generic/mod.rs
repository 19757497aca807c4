//! The decoder layer for every device: one autograd node per layer, as on the CPU
//! (`fused::layer`), built from candle tensor ops that have CUDA and Metal kernels.
//!
//! Composed from candle's single ops, a layer keeps every intermediate of every op for the
//! backward pass (the attention scores of all heads at ~24 bytes per element) and candle's
//! backprop keeps full-size gradients of untracked operands: Llama-2-7B at 2,048 tokens
//! needs ~220 GiB that way. Here a layer keeps its input and the few activations its
//! hand-written backward pass needs (or only its input, with gradient checkpointing), and
//! attention runs in blocks of queries in both passes, so no pass holds the whole
//! T × T scores. Products run in the model's precision (cuBLAS / MPS on a GPU); norms,
//! softmax and SwiGLU in f32.
//!
//! `PEFT_STUDIO_FUSED=generic` runs it on the CPU too, which is how the tests check it
//! against the f64 composed reference without a GPU.

pub mod attention;
mod bottleneck;
pub mod cross_entropy;
mod elementwise;
mod handoff;
pub mod layer;
mod norms;
mod projection;

use candle_core::{DType, Tensor};

pub use attention::SCORES_PER_BLOCK;
pub use cross_entropy::LOGITS_PER_CHUNK;

use super::fused::{self, Kernels};

/// Whether the generic layer serves `t`: f32, bf16 or f16 where the fused CPU kernels do
/// not (a GPU, or every device under `PEFT_STUDIO_FUSED=generic`), unless the composed ops
/// are asked for.
pub fn applies(t: &Tensor) -> bool {
    fused::kernels() != Kernels::Composed
        && !fused::applies(t)
        && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
}
