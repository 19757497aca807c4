//! The speed of the fused kernels' products on this machine, for `bench`: a linear layer's
//! forward product `x·Wᵀ` timed in f32 (OpenBLAS or gemm, as training runs it) and on each
//! bf16 kernel the CPU has, so a step's time can be read against what the products reach.

use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use half::bf16;

use super::bf16_matmul::{self, Kernel, Packed};
use super::timing::best_seconds;
use super::weight::Weight;
use crate::model::quantized::{self, Format, QuantizedWeight};

/// GFLOP/s of one product shape: f32, then each bf16 kernel (fastest first), each with its
/// packing per product included, as training runs it.
pub struct ProductRates {
    /// `(rows, fan_in, out)` of the timed product.
    pub shape: (usize, usize, usize),
    /// f32 products on all threads.
    pub f32: f64,
    /// What the cores' f32 FMAs reach on all threads with nothing to load ([`f32_peak`]),
    /// `None` on CPUs without FMA.
    pub f32_peak: Option<f64>,
    /// bf16 products per kernel, packing included.
    pub bf16: Vec<(Kernel, f64)>,
    /// Products from a Q4_K weight (or the type llama.cpp falls back to for this width),
    /// widening included: `q4_k` in an f32 model, `q4_k-bf16` in a bf16 one; and from a
    /// bf16 weight an f32 model holds (`bf16-held`).
    pub quantized: Vec<(String, f64)>,
    /// The input gradient `g·W` at the same shape: f32, and from a bf16 weight an f32 model
    /// holds (`bf16-held`).
    pub gradients: Vec<(String, f64)>,
}

/// Times `x·Wᵀ` for `x` [rows, fan_in] and `W` [out, fan_in] on all threads: the best of
/// `repeats` runs per kernel after one warm-up run.
pub fn measure(rows: usize, fan_in: usize, out: usize, repeats: usize) -> ProductRates {
    let x: Vec<f32> = (0..rows * fan_in)
        .map(|i| ((i % 17) as f32 - 8.0) / 16.0)
        .collect();
    let w32: Vec<f32> = (0..out * fan_in)
        .map(|i| ((i % 13) as f32 - 6.0) / 64.0)
        .collect();
    let w16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
    let flops = 2.0 * (rows * fan_in * out) as f64;
    let mut y = vec![0.0f32; rows * out];
    let best = |run: &mut dyn FnMut()| best_seconds(repeats, run);
    let f32_s = best(&mut || Weight::F32(&w32).forward(&x, &mut y, (rows, fan_in, out), true));
    let bf16 = Kernel::available()
        .iter()
        .map(|&kernel| {
            // Tiles multiply straight from the weight's rows, as training runs them.
            let s = best(&mut || match kernel {
                Kernel::Tiles => Weight::Bf16(&w16).forward(&x, &mut y, (rows, fan_in, out), true),
                Kernel::DotProducts => {
                    let packed = Packed::transposed(&w16, out, fan_in);
                    bf16_matmul::matmul_with(kernel, &mut y, &x, &packed, false, true)
                }
            });
            (kernel, flops / s / 1e9)
        })
        .collect();
    let g: Vec<f32> = (0..rows * out)
        .map(|i| ((i % 11) as f32 - 5.0) / 16.0)
        .collect();
    let mut dx = vec![0.0f32; rows * fan_in];
    let dims = (rows, fan_in, out);
    let mut gradients = vec![(
        "f32".to_string(),
        flops / best(&mut || Weight::F32(&w32).input_gradient(&g, &mut dx, dims, true)) / 1e9,
    )];
    let mut quantized = Vec::new();
    let dense = candle_core::Tensor::from_slice(&w32, (out, fan_in), &Device::Cpu);
    let format = quantized::format_for(Format::Ggml(GgmlDType::Q4K), fan_in);
    // Q4_K in an f32 and a bf16 model, and a bf16 weight as an f32 model holds a bf16 file's.
    let held = Some(Format::Ggml(GgmlDType::BF16));
    for (format, suffix, dtype) in [
        (format, "", DType::F32),
        (format, "-bf16", DType::BF16),
        (held, "-held", DType::F32),
    ] {
        let q = dense
            .as_ref()
            .ok()
            .zip(format)
            .and_then(|(w, f)| QuantizedWeight::quantize(w, f, dtype, &Device::Cpu).ok());
        if let Some(q) = q {
            let w = Weight::quantized(&q);
            let s = best(&mut || w.forward(&x, &mut y, (rows, fan_in, out), true));
            let label = q.format().to_string().to_lowercase() + suffix;
            if suffix == "-held" {
                let s = best(&mut || w.input_gradient(&g, &mut dx, dims, true));
                gradients.push((label.clone(), flops / s / 1e9));
            }
            quantized.push((label, flops / s / 1e9));
        }
    }
    ProductRates {
        shape: (rows, fan_in, out),
        f32: flops / f32_s / 1e9,
        f32_peak: f32_peak(),
        bf16,
        quantized,
        gradients,
    }
}

/// The f32 peak of this machine in GFLOP/s: every rayon thread runs independent FMA chains
/// on registers alone (AVX-512 where the CPU has it, else AVX2), long enough to reach the
/// clock that sustained vector work runs at. The ceiling `bench` reads the products against.
pub fn f32_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let width = super::math::vector_width();
        if width < 256 {
            return None;
        }
        const ITERS: usize = 20_000_000;
        let start = Instant::now();
        let flops: usize = rayon::broadcast(|_| {
            // SAFETY: `vector_width` found the features each loop needs.
            let (lanes, sink) = unsafe {
                if width == 512 {
                    (16, fma_chains_512(ITERS))
                } else {
                    (8, fma_chains_256(ITERS))
                }
            };
            std::hint::black_box(sink);
            ITERS * CHAINS * lanes * 2
        })
        .into_iter()
        .sum();
        Some(flops as f64 / start.elapsed().as_secs_f64() / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Independent accumulator chains: enough to cover an FMA's latency on two ports.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    // Distinct starting values, so that no chain can be merged with another.
    let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(1.0 + i as f32));
    for _ in 0..iters {
        for a in &mut acc {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_256(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(1.0 + i as f32));
    for _ in 0..iters {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    let mut lanes = [0.0f32; 8];
    acc.iter()
        .map(|&a| {
            // SAFETY: `lanes` holds the eight f32 of one register.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
            lanes.iter().sum::<f32>()
        })
        .sum()
}
