//! A frozen weight as the fused kernels multiply it, borrowed from its storage: f32, bf16
//! multiplied as it is, or rows of a quantized weight; its products with activations (many
//! rows through the blocked kernels, a few as dot products) and with output gradients.

use half::bf16;

use super::bf16_matmul;
use super::math;
use super::matmul::{add_product, Mat};
use super::quantized;
use super::widening::Half;
use crate::model::quantized::QuantizedWeight;

/// Products with at most this many rows run as dot products (`Weight::forward_by_dots`).
const DOT_ROWS: usize = 4;
/// Outputs per parallel task of those dot products.
const DOT_OUTPUTS: usize = 64;

/// One weight row as a dot product reads it.
#[derive(Clone, Copy)]
enum Row<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// A quantized row that failed to widen (never: its blocks were checked).
    Nan,
}

impl Row<'_> {
    /// The dot product with one activation row.
    fn dot(self, x: &[f32]) -> f32 {
        match self {
            Row::F32(w) => math::dot(x, w),
            Row::Bf16(w) => math::dot_bf16(x, w),
            Row::Nan => f32::NAN,
        }
    }
}

/// A frozen weight [out, in]: f32, bf16 multiplied as it is (`bf16_matmul`), or rows
/// `first..first + rows` of a quantized weight, widened a tile at a time (`fused::quantized`).
#[derive(Clone, Copy)]
pub(super) enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    Quantized {
        weight: &'a QuantizedWeight,
        first: usize,
        rows: usize,
    },
}

impl<'a> Weight<'a> {
    /// A whole quantized weight.
    pub fn quantized(weight: &'a QuantizedWeight) -> Self {
        Weight::Quantized {
            weight,
            first: 0,
            rows: weight.dims().0,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w) => w.len(),
            Weight::Quantized { weight, rows, .. } => rows * weight.dims().1,
        }
    }

    /// Rows `r0..r0 + n` of the weight, rows `cols` wide.
    pub fn rows(self, r0: usize, n: usize, cols: usize) -> Weight<'a> {
        match self {
            Weight::F32(w) => Weight::F32(&w[r0 * cols..][..n * cols]),
            Weight::Bf16(w) => Weight::Bf16(&w[r0 * cols..][..n * cols]),
            Weight::Quantized { weight, first, .. } => Weight::Quantized {
                weight,
                first: first + r0,
                rows: n,
            },
        }
    }

    /// Row `j` as it lies (`None` for a quantized weight, whose rows are widened first; a
    /// bf16 weight an f32 model holds is read in place, with the activations unrounded).
    fn row(&self, j: usize, fan_in: usize) -> Option<Row<'a>> {
        match *self {
            Weight::F32(w) => Some(Row::F32(&w[j * fan_in..][..fan_in])),
            Weight::Bf16(w) => Some(Row::Bf16(&w[j * fan_in..][..fan_in])),
            Weight::Quantized { weight, first, .. } => match quantized::half(weight)? {
                Half::Bf16(w) => Some(Row::Bf16(w.get((first + j) * fan_in..)?.get(..fan_in)?)),
                Half::F16(_) => None,
            },
        }
    }

    /// `y += x·Wᵀ` for `x` [rows, in] and `y` [rows, out], on every thread (`parallel`) or
    /// on the calling one.
    pub fn forward(&self, x: &[f32], y: &mut [f32], dims: (usize, usize, usize), parallel: bool) {
        let (rows, fan_in, out) = dims;
        if rows <= DOT_ROWS {
            return self.forward_by_dots(x, y, dims, parallel);
        }
        match *self {
            Weight::Quantized { weight, first, .. } => {
                quantized::forward(weight, first, x, y, dims, parallel)
            }
            Weight::F32(w) => {
                let xm = Mat::rows(x, rows, fan_in, fan_in);
                let wt = Mat::rows(w, out, fan_in, fan_in).t();
                add_product(y, out, xm, wt, parallel)
            }
            Weight::Bf16(w) => bf16_matmul::matmul_wt(y, x, w, (out, fan_in), true, parallel),
        }
    }

    /// [`Self::forward`] for a few rows (decoding: one token per sequence) as one dot product
    /// per output: the weight's rows are read as they lie, where a matrix product would pack
    /// the whole weight for one row (OpenBLAS spent 60% of decoding in that packing). Each
    /// weight row is read once for all of `x`'s rows, and each output is the same dot
    /// product whatever the other rows are: a sequence decodes the same tokens alone or
    /// batched with others.
    pub fn forward_by_dots(
        &self,
        x: &[f32],
        y: &mut [f32],
        dims: (usize, usize, usize),
        parallel: bool,
    ) {
        use rayon::prelude::*;
        let (rows, fan_in, out) = dims;
        // bf16 products take the activations rounded to bf16, as the tiles do.
        let rounded: Vec<f32>;
        let x = match self {
            Weight::F32(_) | Weight::Quantized { .. } => x,
            Weight::Bf16(_) => {
                rounded = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
                &rounded
            }
        };
        // One task per block of outputs: its weight rows against every row of `x`, written
        // into a [rows, block] scratch and then added to `y` (whose rows are `out` apart).
        let block = |c: usize| -> Vec<f32> {
            let j0 = c * DOT_OUTPUTS;
            let n = DOT_OUTPUTS.min(out - j0);
            let mut sums = vec![0.0f32; rows * n];
            let mut widened = Vec::new();
            let x = &x[..rows * fan_in];
            let groups = rows / math::DOT_GROUP;
            let group = |g: usize| -> [&[f32]; math::DOT_GROUP] {
                std::array::from_fn(|r| &x[(g * math::DOT_GROUP + r) * fan_in..][..fan_in])
            };
            let mut j = 0;
            while j < n {
                // Two weight rows at a time where the CPU has the registers for it: each
                // activation load serves both (each sum still as its own `dot` forms it).
                if j + 1 < n && groups > 0 {
                    let pair =
                        |g: usize| match (self.row(j0 + j, fan_in), self.row(j0 + j + 1, fan_in)) {
                            (Some(Row::F32(a)), Some(Row::F32(b))) => {
                                math::dots_pair(group(g), [a, b])
                            }
                            (Some(Row::Bf16(a)), Some(Row::Bf16(b))) => {
                                math::dots_pair_bf16(group(g), [a, b])
                            }
                            _ => None,
                        };
                    if let Some(first) = pair(0) {
                        for g in 0..groups {
                            let got = if g == 0 { Some(first) } else { pair(g) };
                            for (k, got) in got.into_iter().flatten().enumerate() {
                                for (r, v) in got.into_iter().enumerate() {
                                    sums[(g * math::DOT_GROUP + r) * n + j + k] = v;
                                }
                            }
                        }
                        for k in 0..2 {
                            if let Some(w) = self.row(j0 + j + k, fan_in) {
                                for r in groups * math::DOT_GROUP..rows {
                                    sums[r * n + j + k] = w.dot(&x[r * fan_in..][..fan_in]);
                                }
                            }
                        }
                        j += 2;
                        continue;
                    }
                }
                let w = match (self.row(j0 + j, fan_in), *self) {
                    (Some(w), _) => w,
                    (None, Weight::Quantized { weight, first, .. }) => {
                        widened.resize(fan_in, 0.0);
                        match weight.rows_to_f32(first + j0 + j, &mut widened) {
                            Ok(()) => Row::F32(&widened),
                            // The blocks were checked when the weight was made.
                            Err(_) => Row::Nan,
                        }
                    }
                    (None, _) => Row::Nan,
                };
                // Rows in groups sharing each read of `w` (each sum as its own `dot` forms it).
                for g in 0..groups {
                    let got = match w {
                        Row::F32(w) => math::dots(group(g), w),
                        Row::Bf16(w) => math::dots_bf16(group(g), w),
                        Row::Nan => [f32::NAN; math::DOT_GROUP],
                    };
                    for (r, v) in got.into_iter().enumerate() {
                        sums[(g * math::DOT_GROUP + r) * n + j] = v;
                    }
                }
                for r in groups * math::DOT_GROUP..rows {
                    sums[r * n + j] = w.dot(&x[r * fan_in..][..fan_in]);
                }
                j += 1;
            }
            sums
        };
        let blocks = out.div_ceil(DOT_OUTPUTS);
        let sums: Vec<Vec<f32>> = if parallel {
            (0..blocks).into_par_iter().map(block).collect()
        } else {
            (0..blocks).map(block).collect()
        };
        for (c, sums) in sums.iter().enumerate() {
            let j0 = c * DOT_OUTPUTS;
            let n = sums.len() / rows.max(1);
            for (yr, s) in y.chunks_exact_mut(out).zip(sums.chunks_exact(n.max(1))) {
                yr[j0..j0 + n].iter_mut().zip(s).for_each(|(y, s)| *y += s);
            }
        }
    }

    /// `dx += g·W` for `g` [rows, out] and `dx` [rows, in], threads as for `forward`.
    pub fn input_gradient(
        &self,
        g: &[f32],
        dx: &mut [f32],
        dims: (usize, usize, usize),
        parallel: bool,
    ) {
        let (rows, fan_in, out) = dims;
        match *self {
            Weight::F32(w) => {
                let gm = Mat::rows(g, rows, out, out);
                let wm = Mat::rows(w, out, fan_in, fan_in);
                add_product(dx, fan_in, gm, wm, parallel)
            }
            Weight::Bf16(w) => {
                let packed = bf16_matmul::Packed::plain(w, out, fan_in);
                bf16_matmul::matmul(dx, g, &packed, true, parallel)
            }
            Weight::Quantized { weight, first, .. } => {
                quantized::input_gradient(weight, first, g, dx, dims, parallel)
            }
        }
    }
}
