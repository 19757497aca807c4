//! A contiguous CPU tensor, or a custom op's input storage, as f32 elements: f32 storage is
//! borrowed, bf16 and f16 storage widened into a copy. The kernels compute in f32 whatever
//! the model's dtype; a half-precision model keeps its weights, and the activations between
//! ops, at half the bytes, and its ops' results are narrowed back to its dtype.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Deref;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Storage, StorageRef, Tensor};
use half::{bf16, f16};

use rayon::prelude::*;

use super::bf16_matmul;
use super::math::{self, bf16_to_f32, f16_to_f32};
use super::weight::Weight;
use crate::model::base_weight::BaseWeight;
use crate::model::quantized::QuantizedWeight;

/// A CPU tensor's elements as f32: borrowed, or widened from half precision.
pub enum Floats<'a> {
    Borrowed {
        guard: StorageRef<'a>,
        start: usize,
        len: usize,
    },
    Widened(Vec<f32>),
}

impl Deref for Floats<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Floats::Borrowed { guard, start, len } => match &**guard {
                Storage::Cpu(CpuStorage::F32(v)) => &v[*start..*start + *len],
                // `view` borrows only f32 CPU storage.
                _ => &[],
            },
            Floats::Widened(v) => v,
        }
    }
}

/// Refuses every CPU-only kernel under `PEFT_STUDIO_FUSED=generic`, where the tests prove
/// that what a GPU runs never reaches one: all of them read their data through this file.
fn cpu_only() -> candle_core::Result<()> {
    if super::kernels() == super::Kernels::Generic {
        candle_core::bail!("a CPU-only kernel was reached under PEFT_STUDIO_FUSED=generic")
    }
    Ok(())
}

/// `t`'s elements as f32; `t` must be a contiguous f32, bf16 or f16 CPU tensor.
pub fn view(t: &Tensor) -> candle_core::Result<Floats<'_>> {
    cpu_only()?;
    let (guard, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused op: expected a contiguous tensor")
    };
    Ok(match &*guard {
        Storage::Cpu(CpuStorage::F32(_)) => Floats::Borrowed {
            guard,
            start,
            len: end - start,
        },
        Storage::Cpu(s) => Floats::Widened(widened(s, start, end)?),
        _ => candle_core::bail!("fused op: expected a CPU tensor"),
    })
}

/// A frozen weight's elements as the products take them: bf16 as stored where the CPU
/// multiplies bf16 (`bf16_matmul::available`), else as f32.
pub(super) enum WeightView<'a> {
    Bf16 {
        guard: StorageRef<'a>,
        start: usize,
        len: usize,
    },
    Floats(Floats<'a>),
    Quantized(&'a QuantizedWeight),
}

impl WeightView<'_> {
    pub(super) fn weight(&self) -> Weight<'_> {
        match self {
            WeightView::Bf16 { guard, start, len } => match &**guard {
                Storage::Cpu(CpuStorage::BF16(v)) => Weight::Bf16(&v[*start..*start + *len]),
                // `weight_view` borrows only bf16 CPU storage.
                _ => Weight::Bf16(&[]),
            },
            WeightView::Floats(f) => Weight::F32(f),
            WeightView::Quantized(q) => Weight::quantized(q),
        }
    }
}

/// `t`'s elements for [`Weight`]'s products; `t` must be a contiguous CPU tensor.
pub(super) fn weight_view(t: &Tensor) -> candle_core::Result<WeightView<'_>> {
    cpu_only()?;
    let (guard, layout) = t.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::BF16(_)), Some((start, end)), true) = (
        &*guard,
        layout.contiguous_offsets(),
        bf16_matmul::available(),
    ) {
        return Ok(WeightView::Bf16 {
            guard,
            start,
            len: end - start,
        });
    }
    drop(guard);
    Ok(WeightView::Floats(view(t)?))
}

/// A linear layer's weight as decoding reads it (`decode`): as [`base_weight_view`], but a
/// bf16 weight always borrowed as stored, since its dot products widen it in registers on
/// any CPU (a widened copy would double the model's memory).
pub(super) fn decode_view(w: &BaseWeight) -> candle_core::Result<WeightView<'_>> {
    if let BaseWeight::Dense(t) = w {
        cpu_only()?;
        let (guard, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::BF16(_)), Some((start, end))) =
            (&*guard, layout.contiguous_offsets())
        {
            return Ok(WeightView::Bf16 {
                guard,
                start,
                len: end - start,
            });
        }
    }
    base_weight_view(w)
}

/// A linear layer's weight for [`Weight`]'s products: a contiguous CPU tensor as
/// [`weight_view`] takes it, or quantized blocks on the CPU as they are.
pub(super) fn base_weight_view(w: &BaseWeight) -> candle_core::Result<WeightView<'_>> {
    match w {
        BaseWeight::Dense(t) => weight_view(t),
        BaseWeight::Quantized(q) => {
            cpu_only()?;
            if !q.device().is_cpu() {
                candle_core::bail!("fused op: expected a CPU weight")
            }
            Ok(WeightView::Quantized(q))
        }
    }
}

/// A custom op's input storage as f32 elements; it must be contiguous f32, bf16 or f16.
pub fn storage_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Cow<'a, [f32]>> {
    cpu_only()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused op: expected a contiguous input")
    };
    Ok(match storage {
        CpuStorage::F32(v) => Cow::Borrowed(&v[start..end]),
        s => Cow::Owned(widened(s, start, end)?),
    })
}

fn widened(storage: &CpuStorage, start: usize, end: usize) -> candle_core::Result<Vec<f32>> {
    Ok(match storage {
        CpuStorage::BF16(v) => converted(&v[start..end], bf16_to_f32),
        CpuStorage::F16(v) => converted(&v[start..end], f16_to_f32),
        s => candle_core::bail!("fused op: expected f32, bf16 or f16, got {:?}", s.dtype()),
    })
}

/// A result vector as a custom op's output in `dtype` (its input's).
pub fn output(data: Vec<f32>, shape: impl Into<Shape>, dtype: DType) -> (CpuStorage, Shape) {
    let storage = match dtype {
        DType::BF16 => CpuStorage::BF16(converted(&data, f32_to_bf16)),
        DType::F16 => CpuStorage::F16(converted(&data, f32_to_f16)),
        _ => CpuStorage::F32(data),
    };
    (storage, shape.into())
}

/// Elements per parallel task of a conversion between f32 and half precision.
const CONVERT_CHUNK: usize = 1 << 16;

math::vectorised! {
    fn f32_to_bf16(out: &mut [MaybeUninit<bf16>], src: &[f32]) {
        for (o, s) in out.iter_mut().zip(src) {
            o.write(bf16::from_f32(*s));
        }
    }
}

math::vectorised! {
    fn f32_to_f16(out: &mut [MaybeUninit<f16>], src: &[f32]) {
        for (o, s) in out.iter_mut().zip(src) {
            o.write(f16::from_f32(*s));
        }
    }
}

/// `src` converted by `convert` (one of the functions above) on every thread: the widening
/// and narrowing around every fused op of a half-precision model, which ran one element at a
/// time.
fn converted<S: Sync, T: Send>(src: &[S], convert: fn(&mut [MaybeUninit<T>], &[S])) -> Vec<T> {
    filled(src.len(), CONVERT_CHUNK, |i, out| {
        convert(out, &src[i..][..out.len()])
    })
}

/// `n` elements written `chunk` at a time on every thread by `fill(start, chunk)`, which must
/// write every element of the chunk it is given: an output is not zeroed first only to be
/// overwritten.
pub(super) fn filled<T: Send>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, part)| fill(c * chunk, part));
    // SAFETY: the chunks cover the first `n` elements and `fill` writes each of them.
    unsafe { out.set_len(n) };
    out
}

/// The gradient `data` of the tensor `like`, in its shape and dtype.
pub fn tensor(data: Vec<f32>, like: &Tensor) -> candle_core::Result<Tensor> {
    let cpu = &candle_core::Device::Cpu;
    match like.dtype() {
        DType::BF16 => Tensor::from_vec(converted(&data, f32_to_bf16), like.shape(), cpu),
        DType::F16 => Tensor::from_vec(converted(&data, f32_to_f16), like.shape(), cpu),
        DType::F32 => Tensor::from_vec(data, like.shape(), cpu),
        other => Tensor::from_vec(data, like.shape(), cpu)?.to_dtype(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised conversions give `half`'s bits for every value, rounding ties, NaN,
    /// infinities and subnormals included, over several parallel chunks.
    #[test]
    fn conversions_equal_half_s_element_by_element() {
        let special = [
            0.0,
            -0.0,
            1.0,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
            -3e-39,
        ];
        let data: Vec<f32> = special
            .into_iter()
            .chain(
                (0..3 * CONVERT_CHUNK as u32 + 17)
                    .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))),
            )
            .collect();
        let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let narrowed = converted(&data, f32_to_bf16);
        let want: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
        assert_eq!(bits(&narrowed), bits(&want));
        let widened = converted(&narrowed, bf16_to_f32);
        assert!(widened
            .iter()
            .zip(&want)
            .all(|(w, h)| w.to_bits() == h.to_f32().to_bits()));
        let halves = converted(&data, f32_to_f16);
        let want16: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        assert!(halves
            .iter()
            .zip(&want16)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let back = converted(&halves, f16_to_f32);
        assert!(back
            .iter()
            .zip(&want16)
            .all(|(a, b)| a.to_bits() == b.to_f32().to_bits()));
    }
}
