//! Borrowing a contiguous f32 CPU tensor, or a custom op's input storage, as a slice.

use std::ops::Deref;

use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};

/// A contiguous f32 CPU tensor's elements, borrowed.
pub struct F32View<G> {
    guard: G,
    start: usize,
    len: usize,
}

impl<G: Deref<Target = Storage>> Deref for F32View<G> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            // `view` only builds views of f32 CPU storage.
            _ => &[],
        }
    }
}

/// Borrows `t`'s elements; `t` must be a contiguous f32 CPU tensor.
pub fn view(t: &Tensor) -> candle_core::Result<F32View<impl Deref<Target = Storage> + '_>> {
    let (guard, layout) = t.storage_and_layout();
    let start = match (&*guard, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(_)), Some((start, _))) => start,
        _ => candle_core::bail!("fused op: expected a contiguous f32 CPU tensor"),
    };
    Ok(F32View {
        guard,
        start,
        len: layout.shape().elem_count(),
    })
}

/// A custom op's input storage as a slice; it must be contiguous f32.
pub fn storage_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("fused op: expected a contiguous f32 input"),
    }
}

/// A result vector as a custom op's output.
pub fn output(data: Vec<f32>, shape: impl Into<Shape>) -> (CpuStorage, Shape) {
    (CpuStorage::F32(data), shape.into())
}

/// A CPU tensor from a result vector (for gradients computed in a backward pass).
pub fn tensor(data: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape.into(), &candle_core::Device::Cpu)
}
