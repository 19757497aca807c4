//! Rows of a GGUF-typed weight (llama.cpp's block formats, as candle's `k_quants` defines
//! them) widened to f32: the one thing the products need from a stored block.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

use crate::model::fused::math::{widen_bf16_into, widen_f16_into};

/// Writes rows `r0..r0 + out.len() / cols` of a `[rows, cols]` weight stored as `dtype`
/// blocks in `bytes` (candle's own CPU storage of a `QTensor`) into `out`, as f32.
pub fn rows_to_f32(
    dtype: GgmlDType,
    bytes: &[u8],
    cols: usize,
    r0: usize,
    out: &mut [f32],
) -> candle_core::Result<()> {
    macro_rules! by_type {
        ($($variant:ident => $block:ty),* $(,)?) => {
            match dtype {
                // Half-precision rows widen on vectors (candle's `to_float` runs one element
                // at a time: a twentieth of a step when an f32 model holds a bf16 weight).
                GgmlDType::F16 => rows_as::<f16>(bytes, cols, r0, out, widen_f16_into),
                GgmlDType::BF16 => rows_as::<bf16>(bytes, cols, r0, out, widen_bf16_into),
                $(GgmlDType::$variant => rows_as::<$block>(bytes, cols, r0, out, <$block>::to_float),)*
            }
        };
    }
    by_type!(
        F32 => f32,
        Q4_0 => BlockQ4_0, Q4_1 => BlockQ4_1, Q5_0 => BlockQ5_0, Q5_1 => BlockQ5_1,
        Q8_0 => BlockQ8_0, Q8_1 => BlockQ8_1,
        Q2K => BlockQ2K, Q3K => BlockQ3K, Q4K => BlockQ4K, Q5K => BlockQ5K, Q6K => BlockQ6K,
        Q8K => BlockQ8K,
    )
}

fn rows_as<T: GgmlType>(
    bytes: &[u8],
    cols: usize,
    r0: usize,
    out: &mut [f32],
    widen: fn(&[T], &mut [f32]),
) -> candle_core::Result<()> {
    let size = std::mem::size_of::<T>();
    if !cols.is_multiple_of(T::BLCK_SIZE)
        || !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        candle_core::bail!(
            "quantized weight: storage does not hold whole {:?} blocks",
            T::DTYPE
        )
    }
    // SAFETY: the bytes are candle's own `Vec<T>` storage (checked above for size and
    // alignment), and every block type is plain data.
    let blocks: &[T] =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
    let per_row = cols / T::BLCK_SIZE;
    let rows = out.len() / cols.max(1);
    let Some(wanted) = blocks.get(r0 * per_row..(r0 + rows) * per_row) else {
        candle_core::bail!("quantized weight: rows {r0}..{} out of range", r0 + rows)
    };
    widen(wanted, out);
    Ok(())
}
