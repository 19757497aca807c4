//! A frozen linear layer, with its LoRA branch when it has one, as one op:
//! `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`.
//!
//! The frozen weight gets no gradient (candle's matmul would compute one: a third of the
//! layer's backward FLOPs), the op keeps only its input (the low-rank product `x·Aᵀ` is
//! recomputed in the backward pass: `rows × in × r` FLOPs, next to nothing), and the LoRA
//! branch costs no intermediate [rows, out] tensors. Products land in freshly zeroed buffers
//! (`accumulate`, see `matmul`).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use super::matmul::{matmul_par, Mat};
use super::view::{output, storage_slice, tensor, view};
use crate::error::Result;

/// A LoRA branch: A [r, in], B [out, r] and the scale s.
#[derive(Clone, Copy)]
pub struct LoraParts<'a> {
    /// A [r, in_features].
    pub a: &'a Tensor,
    /// B [out_features, r].
    pub b: &'a Tensor,
    /// `alpha / r` (or `alpha / √r`).
    pub scale: f64,
}

/// The input's gradient (when it needs one) and the LoRA matrices' (when there are any).
type Gradients = (Option<Tensor>, Option<(Tensor, Tensor)>);

struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    scale: f32,
}

impl FrozenLinear {
    fn dims(&self, x_len: usize) -> candle_core::Result<(usize, usize, usize)> {
        let (out, fan_in) = self.weight.dims2()?;
        Ok((x_len / fan_in.max(1), fan_in, out))
    }

    fn out_shape(&self, x: &Shape) -> candle_core::Result<Shape> {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.weight.dim(0)?;
        }
        Ok(Shape::from(dims))
    }

    /// `x·Wᵀ + b`, plus `s·(x·Aᵀ)·Bᵀ` when `lora` holds A and B.
    fn forward(
        &self,
        x: &[f32],
        shape: &Shape,
        lora: Option<(&[f32], &[f32])>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, fan_in, out) = self.dims(x.len())?;
        let w = view(&self.weight)?;
        let mut y = vec![0.0f32; rows * out];
        let xm = Mat::rows(x, rows, fan_in, fan_in);
        matmul_par(
            &mut y,
            out,
            xm,
            Mat::rows(&w, out, fan_in, fan_in).t(),
            1.0,
            true,
        );
        if let Some((a, b)) = lora {
            let r = a.len() / fan_in.max(1);
            let mut u = vec![0.0f32; rows * r];
            matmul_par(
                &mut u,
                r,
                xm,
                Mat::rows(a, r, fan_in, fan_in).t(),
                1.0,
                true,
            );
            let bm = Mat::rows(b, out, r, r);
            matmul_par(
                &mut y,
                out,
                Mat::rows(&u, rows, r, r),
                bm.t(),
                self.scale,
                true,
            );
        }
        if let Some(bias) = &self.bias {
            let bias = view(bias)?;
            y.chunks_exact_mut(out)
                .for_each(|row| row.iter_mut().zip(&*bias).for_each(|(y, b)| *y += b));
        }
        Ok(output(y, self.out_shape(shape)?))
    }

    /// Gradients of the input (when it needs one) and of A and B.
    fn backward(
        &self,
        x: &Tensor,
        lora: Option<(&Tensor, &Tensor)>,
        grad: &Tensor,
    ) -> candle_core::Result<Gradients> {
        let grad = grad.contiguous()?;
        let (xs, g, w) = (view(x)?, view(&grad)?, view(&self.weight)?);
        let (rows, fan_in, out) = self.dims(xs.len())?;
        let gm = Mat::rows(&g, rows, out, out);
        let xm = Mat::rows(&xs, rows, fan_in, fan_in);
        let mut dx = x.track_op().then(|| {
            let mut dx = vec![0.0f32; rows * fan_in];
            matmul_par(
                &mut dx,
                fan_in,
                gm,
                Mat::rows(&w, out, fan_in, fan_in),
                1.0,
                true,
            );
            dx
        });
        let mut lora_grads = None;
        if let Some((a_t, b_t)) = lora {
            let (a, b) = (view(a_t)?, view(b_t)?);
            let r = a.len() / fan_in.max(1);
            let (am, bm) = (Mat::rows(&a, r, fan_in, fan_in), Mat::rows(&b, out, r, r));
            let mut u = vec![0.0f32; rows * r];
            matmul_par(&mut u, r, xm, am.t(), 1.0, true);
            // gu = s·g·B [rows, r]; dA = guᵀ·x; dB = s·gᵀ·u; dx += gu·A.
            let mut gu = vec![0.0f32; rows * r];
            matmul_par(&mut gu, r, gm, bm, self.scale, true);
            let gum = Mat::rows(&gu, rows, r, r);
            let mut da = vec![0.0f32; r * fan_in];
            matmul_par(&mut da, fan_in, gum.t(), xm, 1.0, true);
            let mut db = vec![0.0f32; out * r];
            matmul_par(
                &mut db,
                r,
                gm.t(),
                Mat::rows(&u, rows, r, r),
                self.scale,
                true,
            );
            if let Some(dx) = dx.as_mut() {
                matmul_par(dx, fan_in, gum, am, 1.0, true);
            }
            lora_grads = Some((tensor(da, a_t.shape())?, tensor(db, b_t.shape())?));
        }
        let dx = dx.map(|dx| tensor(dx, x.shape())).transpose()?;
        Ok((dx, lora_grads))
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "fused-frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(storage_slice(x, lx)?, lx.shape(), None)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.backward(x, None, grad)?.0)
    }
}

impl CustomOp3 for FrozenLinear {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let lora = (storage_slice(a, la)?, storage_slice(b, lb)?);
        self.forward(storage_slice(x, lx)?, lx.shape(), Some(lora))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, ab) = self.backward(x, Some((a, b)), grad)?;
        let (da, db) = ab.unzip();
        Ok((dx, da, db))
    }
}

/// `x·Wᵀ + b (+ s·(x·Aᵀ)·Bᵀ)` for `x` [..., in], a frozen `weight` [out, in] and `bias`
/// [out]; gradients flow to `x` and to the LoRA matrices only.
pub fn frozen_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<LoraParts>,
) -> Result<Tensor> {
    let op = FrozenLinear {
        weight: weight.contiguous()?,
        bias: bias.map(Tensor::contiguous).transpose()?,
        scale: lora.map_or(1.0, |l| l.scale as f32),
    };
    let x = x.contiguous()?;
    Ok(match lora {
        Some(l) => x.apply_op3(&l.a.contiguous()?, &l.b.contiguous()?, op)?,
        None => x.apply_op1(op)?,
    })
}
