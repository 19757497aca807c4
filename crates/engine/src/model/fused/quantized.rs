//! A frozen projection's products straight from a quantized weight (`model::quantized`):
//! the weight is widened a tile of rows at a time into the buffers the micro-kernels take —
//! f32 for the f32 products, bf16 pairs where the CPU multiplies bf16 (AMX, AVX-512-BF16) —
//! and never whole. The tile's numbers are the dequantized weight's (rounded to bf16 in a
//! bf16 model), so a quantized base computes what its dequantized copy would.

use candle_core::quantized::GgmlDType;
use half::bf16;
use rayon::prelude::*;

use super::bf16_matmul::{self, Packed};
use super::matmul::{add_product, Mat};
use super::widening::{self, Half};
use crate::model::quantized::QuantizedWeight;

/// Elements of a quantized weight widened per tile, few enough that the tile stays in the
/// cache next to its operands ...
const TILE_ELEMENTS: usize = 1 << 16;
/// ... but at least this many rows, to keep the products efficient, and at least as many as
/// the activations have: the bf16 kernels pack the activations once per product, so a tile
/// that small would pack them more often than it multiplies them (at 512 rows of a 1B
/// model's MLP, 64-row tiles ran at a tenth of AMX's rate).
const TILE_ROWS: usize = 128;
/// Rows widened per parallel task.
const WIDEN_ROWS: usize = 16;

/// A bf16 or f16 weight of an f32 model (`model::load::stored_format`) as stored, borrowed:
/// what the widening kernels and decoding's dot products read in place.
pub(super) fn half(weight: &QuantizedWeight) -> Option<Half<'_>> {
    if weight.dtype() != candle_core::DType::F32 {
        return None;
    }
    let (format, std::borrow::Cow::Borrowed(bytes)) = weight.ggml_bytes()? else {
        return None;
    };
    if !(bytes.as_ptr() as usize).is_multiple_of(2) {
        return None;
    }
    let len = bytes.len() / 2;
    // SAFETY: the blocks of a BF16 or F16 weight are its 2-byte values (aligned, checked).
    match format {
        GgmlDType::BF16 => Some(Half::Bf16(unsafe {
            std::slice::from_raw_parts(bytes.as_ptr().cast(), len)
        })),
        GgmlDType::F16 => Some(Half::F16(unsafe {
            std::slice::from_raw_parts(bytes.as_ptr().cast(), len)
        })),
        _ => None,
    }
}

/// Calls `f` with rows `first..first + rows` of `weight` where the widening kernels serve
/// it: a [`half`] weight on a CPU that runs them.
fn as_half<R>(
    weight: &QuantizedWeight,
    (first, rows): (usize, usize),
    f: impl FnOnce(Half) -> R,
) -> Option<R> {
    let cols = weight.dims().1;
    let w = half(weight).filter(|_| widening::available())?;
    Some(f(w.rows(first * cols, rows * cols)?))
}

/// `y += x·Wᵀ` for `x` [rows, in], `y` [rows, out] and `W` rows `first..first + out` of
/// `weight`.
pub fn forward(
    weight: &QuantizedWeight,
    first: usize,
    x: &[f32],
    y: &mut [f32],
    (rows, fan_in, out): (usize, usize, usize),
    parallel: bool,
) {
    let dims = (rows, fan_in, out);
    if as_half(weight, (first, out), |w| {
        widening::forward(w, x, y, dims, parallel)
    })
    .is_some()
    {
        return;
    }
    let xm = Mat::rows(x, rows, fan_in, fan_in);
    let mut part = Vec::new();
    tiles(
        weight,
        (first, out),
        rows,
        parallel,
        |j0, tile, n| match tile {
            // y[:, j0..j0 + n] += x·tileᵀ, written in place through y's row stride.
            Tile::F32(t) => add_product(
                &mut y[j0..],
                out,
                xm,
                Mat::rows(t, n, fan_in, fan_in).t(),
                parallel,
            ),
            // The bf16 kernels write whole rows: the tile's columns land in `part` first.
            Tile::Bf16(t) => {
                part.resize(rows * n, 0.0);
                bf16_matmul::matmul_wt(&mut part, x, t, (n, fan_in), false, parallel);
                for (yr, pr) in y.chunks_exact_mut(out).zip(part.chunks_exact(n)) {
                    yr[j0..j0 + n].iter_mut().zip(pr).for_each(|(y, p)| *y += p);
                }
            }
        },
    );
}

/// `dx += g·W` for `g` [rows, out], `dx` [rows, in] and `W` as for [`forward`].
pub fn input_gradient(
    weight: &QuantizedWeight,
    first: usize,
    g: &[f32],
    dx: &mut [f32],
    (rows, fan_in, out): (usize, usize, usize),
    parallel: bool,
) {
    let dims = (rows, fan_in, out);
    let product = |w: Half| widening::input_gradient(w, g, dx, dims, parallel);
    if as_half(weight, (first, out), product).is_some() {
        return;
    }
    let mut part = Vec::new();
    tiles(
        weight,
        (first, out),
        rows,
        parallel,
        |j0, tile, n| match tile {
            // dx += g[:, j0..j0 + n]·tile.
            Tile::F32(t) => {
                let gm = Mat::rows(&g[j0..], rows, n, out);
                add_product(dx, fan_in, gm, Mat::rows(t, n, fan_in, fan_in), parallel);
            }
            // The bf16 kernels read whole rows: g's columns for the tile are copied out first.
            Tile::Bf16(t) => {
                part.clear();
                part.extend(g.chunks_exact(out).flat_map(|r| &r[j0..j0 + n]));
                let packed = Packed::plain(t, n, fan_in);
                bf16_matmul::matmul(dx, &part, &packed, true, parallel);
            }
        },
    );
}

/// Widening buffers: a tile in f32 and its bf16 copy.
#[derive(Default)]
struct Scratch {
    tile: Vec<f32>,
    halves: Vec<bf16>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One tile of rows, in the precision the products take.
enum Tile<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// Calls `f(j0, tile, n)` for successive tiles of the `rows` rows of `weight` from row
/// `first`, for a product with activations of `m` rows: `tile` [n, cols] holds rows
/// `first + j0..first + j0 + n` widened.
fn tiles(
    weight: &QuantizedWeight,
    (first, rows): (usize, usize),
    m: usize,
    parallel: bool,
    mut f: impl FnMut(usize, Tile, usize),
) {
    let cols = weight.dims().1.max(1);
    let per_tile = (TILE_ELEMENTS / cols)
        .max(TILE_ROWS)
        .max(m.next_multiple_of(32))
        .min(rows.max(1));
    let as_bf16 = weight.dtype() == candle_core::DType::BF16 && bf16_matmul::available();
    // The calling thread's buffers, kept between products: fresh ones cost a page fault and
    // a zeroing per 4 KiB each time (13% of a 1B step). Busy (a product that runs another
    // on this thread while it waits), a product takes buffers of its own.
    let mut own = Scratch::default();
    let mut held = SCRATCH.with(|s| s.try_borrow_mut().map(|mut s| std::mem::take(&mut *s)).ok());
    let scratch = held.as_mut().unwrap_or(&mut own);
    scratch
        .tile
        .resize(scratch.tile.len().max(per_tile * cols), 0.0);
    let halves_len = if as_bf16 { per_tile * cols } else { 0 };
    scratch
        .halves
        .resize(scratch.halves.len().max(halves_len), bf16::ZERO);
    let (tile, halves) = (&mut scratch.tile, &mut scratch.halves);
    let chunk = WIDEN_ROWS * cols;
    for j0 in (0..rows).step_by(per_tile) {
        let n = per_tile.min(rows - j0);
        let buf = &mut tile[..n * cols];
        // The blocks were checked when the weight was made; a failure leaves NaNs that the
        // loss reports.
        if as_bf16 {
            // Each chunk widened and rounded at once, while it is in the cache.
            let halves = &mut halves[..n * cols];
            let widen = |(i, (wide, half)): (usize, (&mut [f32], &mut [bf16]))| {
                if weight
                    .widen_rows(first + j0 + i * WIDEN_ROWS, wide)
                    .is_err()
                {
                    wide.fill(f32::NAN);
                }
                bf16_matmul::round_into(wide, half);
            };
            match parallel {
                true => (buf.par_chunks_mut(chunk), halves.par_chunks_mut(chunk))
                    .into_par_iter()
                    .enumerate()
                    .for_each(widen),
                false => buf
                    .chunks_mut(chunk)
                    .zip(halves.chunks_mut(chunk))
                    .enumerate()
                    .for_each(widen),
            }
            f(j0, Tile::Bf16(halves), n);
        } else {
            let widen = |(i, wide): (usize, &mut [f32])| {
                if weight
                    .rows_to_f32(first + j0 + i * WIDEN_ROWS, wide)
                    .is_err()
                {
                    wide.fill(f32::NAN);
                }
            };
            match parallel {
                true => buf.par_chunks_mut(chunk).enumerate().for_each(widen),
                false => buf.chunks_mut(chunk).enumerate().for_each(widen),
            }
            f(j0, Tile::F32(buf), n);
        }
    }
    if let Some(back) = held {
        SCRATCH.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                *s = back;
            }
        });
    }
}
