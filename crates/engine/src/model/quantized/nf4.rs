//! NF4, QLoRA's 4-bit NormalFloat (bitsandbytes' `quantize_4bit(quant_type="nf4")` without
//! double quantization, its `BitsAndBytesConfig` default): blocks of 64 consecutive weights,
//! each scaled by its largest magnitude (kept in f32) and rounded to the nearest of 16 values
//! (docs/QUANTIZED.md §8). Two codes a byte, the first in the high nibble.

use candle_core::{DType, Device, Tensor};

/// Weights per block.
pub const BLOCK: usize = 64;

/// The 16 NF4 values (bitsandbytes' `_NF4_QUANT_TABLE`), ascending.
pub const CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The code of one scaled weight: how many midpoints between neighbouring values lie below it
/// (`torch.bucketize(scaled, midpoints)`, a weight on a midpoint taking the lower value), the
/// midpoints computed in f32 as bitsandbytes computes them.
fn code_of(scaled: f32) -> u8 {
    let mut q = 0;
    for pair in CODE.windows(2) {
        if (pair[0] + pair[1]) / 2.0 < scaled {
            q += 1;
        }
    }
    q
}

/// `x` (a whole number of blocks) as packed codes and per-block absolute maxima.
pub fn quantize(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(x.len() / 2);
    let mut absmax = Vec::with_capacity(x.len() / BLOCK);
    for block in x.chunks(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = 1.0 / max.max(1e-38);
        absmax.push(max);
        for pair in block.chunks(2) {
            let q = |v: f32| code_of((v * inv).clamp(-1.0, 1.0));
            codes.push(q(pair[0]) << 4 | pair.get(1).map_or(0, |&v| q(v)));
        }
    }
    (codes, absmax)
}

/// Rows `r0..r0 + out.len() / cols` of a [rows, cols] weight (`cols` a multiple of
/// [`BLOCK`]) widened into `out`: `CODE[q] · absmax`, in f32 as bitsandbytes computes it.
pub fn rows_to_f32(
    codes: &[u8],
    absmax: &[f32],
    cols: usize,
    r0: usize,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let first = r0 * cols;
    let (Some(codes), Some(absmax)) = (
        codes.get(first / 2..(first + out.len()) / 2),
        absmax.get(first / BLOCK..(first + out.len()) / BLOCK),
    ) else {
        candle_core::bail!("NF4 weight: rows from {r0} out of range")
    };
    for ((o, c), &m) in out
        .chunks_mut(BLOCK)
        .zip(codes.chunks(BLOCK / 2))
        .zip(absmax)
    {
        // The block's 16 values once (the same products as one per weight), then lookups.
        let values: [f32; 16] = std::array::from_fn(|i| CODE[i] * m);
        for (pair, &byte) in o.chunks_exact_mut(2).zip(c) {
            pair[0] = values[(byte >> 4) as usize];
            pair[1] = values[(byte & 0xF) as usize];
        }
    }
    Ok(())
}

/// The whole [rows, cols] weight widened in f32 on the codes' device, from tensor ops every
/// device runs: the nibbles split by arithmetic, looked up in the 16 values, scaled per block.
pub fn dequantize(
    codes: &Tensor,
    absmax: &Tensor,
    (rows, cols): (usize, usize),
) -> candle_core::Result<Tensor> {
    let device = codes.device();
    let bytes = codes.flatten_all()?.to_dtype(DType::F32)?;
    let high = (&bytes / 16.0)?.floor()?;
    let low = (&bytes - (&high * 16.0)?)?;
    let index = Tensor::stack(&[high, low], 1)?
        .flatten_all()?
        .to_dtype(DType::U32)?;
    let values = Tensor::new(&CODE, device)?.index_select(&index, 0)?;
    values
        .reshape((rows * cols / BLOCK, BLOCK))?
        .broadcast_mul(&absmax.reshape((rows * cols / BLOCK, 1))?)?
        .reshape((rows, cols))
}

/// Quantizes `x` on the CPU and keeps codes and maxima on `device`.
pub fn on_device(x: &[f32], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let (codes, absmax) = quantize(x);
    let (nc, na) = (codes.len(), absmax.len());
    Ok((
        Tensor::from_vec(codes, nc, device)?,
        Tensor::from_vec(absmax, na, device)?,
    ))
}
