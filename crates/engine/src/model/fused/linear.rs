//! A frozen linear layer, with its LoRA branch when it has one, as one op:
//! `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`.
//!
//! The frozen weight gets no gradient (candle's matmul would compute one: a third of the
//! layer's backward FLOPs), the op keeps only its input (the low-rank product `x·Aᵀ` is
//! recomputed in the backward pass: `rows × in × r` FLOPs, next to nothing), and the LoRA
//! branch costs no intermediate [rows, out] tensors. Products land in freshly zeroed buffers
//! (`accumulate`, see `matmul`).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};

use super::matmul::{matmul_par, Mat};

use super::view::{base_weight_view, output, storage_slice, tensor, view};
pub(super) use super::weight::Weight;
use crate::error::Result;
use crate::model::base_weight::BaseWeight;

/// A LoRA branch: A [r, in], B [out, r] and the scale s.
#[derive(Clone, Copy)]
pub struct LoraParts<'a> {
    /// A [r, in_features].
    pub a: &'a Tensor,
    /// B [out_features, r].
    pub b: &'a Tensor,
    /// `alpha / r` (or `alpha / √r`).
    pub scale: f64,
    /// DoRA's magnitude [out_features] (the device-generic layer only: the CPU's fused ops
    /// are never given one).
    pub magnitude: Option<&'a Tensor>,
}

/// A LoRA branch over borrowed elements: A [r, in], B [out, r] and the scale.
#[derive(Clone, Copy)]
pub(super) struct LoraSlices<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub scale: f32,
}

/// A frozen projection over borrowed elements: weight [out, in], bias [out] and a LoRA
/// branch; the kernels of this op and of the fused decoder layer (`layer`).
#[derive(Clone, Copy)]
pub(super) struct Projection<'a> {
    pub weight: Weight<'a>,
    pub bias: Option<&'a [f32]>,
    pub lora: Option<LoraSlices<'a>>,
    pub fan_in: usize,
    pub out: usize,
}

impl Projection<'_> {
    fn rows(&self, x: &[f32]) -> usize {
        x.len() / self.fan_in.max(1)
    }

    /// `x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` for `x` [rows, in]: [rows, out].
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.forward_with(x, x)
    }

    /// [`Self::forward`] with the LoRA branch reading `x_lora` (the input after dropout).
    pub fn forward_with(&self, x: &[f32], x_lora: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; self.rows(x) * self.out];
        self.add_forward_with(x, x_lora, &mut y);
        y
    }

    /// Adds the projection of `x` to `y` [rows, out], the LoRA branch reading `x_lora` (the
    /// input after dropout, or `x`): a residual sum costs no pass of its own (and a freshly
    /// zeroed `y` skips OpenBLAS's zeroing, see `matmul`).
    pub fn add_forward_with(&self, x: &[f32], x_lora: &[f32], y: &mut [f32]) {
        let (rows, fan_in, out) = (self.rows(x), self.fan_in, self.out);
        self.weight.forward(x, y, (rows, fan_in, out), true);
        if let Some(l) = self.lora {
            let r = l.a.len() / fan_in.max(1);
            let mut u = vec![0.0f32; rows * r];
            let xl = Mat::rows(x_lora, rows, fan_in, fan_in);
            matmul_par(
                &mut u,
                r,
                xl,
                Mat::rows(l.a, r, fan_in, fan_in).t(),
                1.0,
                true,
            );
            let bm = Mat::rows(l.b, out, r, r);
            matmul_par(y, out, Mat::rows(&u, rows, r, r), bm.t(), l.scale, true);
        }
        if let Some(bias) = self.bias {
            y.chunks_exact_mut(out)
                .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
        }
    }

    /// Adds the input's gradient for the output gradient `g` [rows, out] into `dx` (when
    /// given) and returns the LoRA matrices' gradients (when there is a branch).
    pub fn backward(
        &self,
        x: &[f32],
        g: &[f32],
        dx: Option<&mut [f32]>,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        self.backward_with(x, None, g, dx)
    }

    /// [`Self::backward`] for a LoRA branch that read `dropped = (input after dropout, the
    /// mask that made it)`.
    pub fn backward_with(
        &self,
        x: &[f32],
        dropped: Option<(&[f32], &[f32])>,
        g: &[f32],
        mut dx: Option<&mut [f32]>,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        let (rows, fan_in, out) = (self.rows(x), self.fan_in, self.out);
        let gm = Mat::rows(g, rows, out, out);
        if let Some(dx) = dx.as_deref_mut() {
            self.weight.input_gradient(g, dx, (rows, fan_in, out), true);
        }
        let l = self.lora?;
        let xl = Mat::rows(dropped.map_or(x, |d| d.0), rows, fan_in, fan_in);
        let r = l.a.len() / fan_in.max(1);
        let (am, bm) = (Mat::rows(l.a, r, fan_in, fan_in), Mat::rows(l.b, out, r, r));
        let mut u = vec![0.0f32; rows * r];
        matmul_par(&mut u, r, xl, am.t(), 1.0, true);
        // gu = s·g·B [rows, r]; dA = guᵀ·x'; dB = s·gᵀ·u; dx += (gu·A) ⊙ mask.
        let mut gu = vec![0.0f32; rows * r];
        matmul_par(&mut gu, r, gm, bm, l.scale, true);
        let gum = Mat::rows(&gu, rows, r, r);
        let mut da = vec![0.0f32; r * fan_in];
        matmul_par(&mut da, fan_in, gum.t(), xl, 1.0, true);
        let mut db = vec![0.0f32; out * r];
        matmul_par(&mut db, r, gm.t(), Mat::rows(&u, rows, r, r), l.scale, true);
        match (dx, dropped) {
            (Some(dx), Some((_, mask))) => {
                let mut t = vec![0.0f32; dx.len()];
                matmul_par(&mut t, fan_in, gum, am, 1.0, true);
                dx.iter_mut()
                    .zip(t.iter().zip(mask))
                    .for_each(|(d, (t, m))| *d += t * m);
            }
            (Some(dx), None) => matmul_par(dx, fan_in, gum, am, 1.0, true),
            (None, _) => {}
        }
        Some((da, db))
    }
}

/// The input's gradient (when it needs one) and the LoRA matrices' (when there are any).
type Gradients = (Option<Tensor>, Option<(Tensor, Tensor)>);

struct FrozenLinear {
    weight: BaseWeight,
    bias: Option<Tensor>,
    scale: f32,
}

impl FrozenLinear {
    fn out_shape(&self, x: &Shape) -> candle_core::Result<Shape> {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.weight.dims().0;
        }
        Ok(Shape::from(dims))
    }

    /// Runs `f` on the projection this op computes, its LoRA branch from `lora`.
    fn with_projection<R>(
        &self,
        lora: Option<(&[f32], &[f32])>,
        f: impl FnOnce(Projection) -> R,
    ) -> candle_core::Result<R> {
        let (out, fan_in) = self.weight.dims();
        let weight = base_weight_view(&self.weight)?;
        let bias = self.bias.as_ref().map(view).transpose()?;
        Ok(f(Projection {
            weight: weight.weight(),
            bias: bias.as_deref(),
            lora: lora.map(|(a, b)| LoraSlices {
                a,
                b,
                scale: self.scale,
            }),
            fan_in,
            out,
        }))
    }

    fn forward(
        &self,
        x: &[f32],
        shape: &Shape,
        dtype: DType,
        lora: Option<(&[f32], &[f32])>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.with_projection(lora, |p| p.forward(x))?;
        Ok(output(y, self.out_shape(shape)?, dtype))
    }

    fn backward(
        &self,
        x: &Tensor,
        lora: Option<(&Tensor, &Tensor)>,
        grad: &Tensor,
    ) -> candle_core::Result<Gradients> {
        let grad = grad.contiguous()?;
        let (xs, g) = (view(x)?, view(&grad)?);
        let ab = lora.map(|(a, b)| Ok::<_, candle_core::Error>((view(a)?, view(b)?)));
        let ab = ab.transpose()?;
        let mut dx = x.track_op().then(|| vec![0.0f32; xs.len()]);
        let lora_grads = self.with_projection(ab.as_ref().map(|(a, b)| (&a[..], &b[..])), |p| {
            p.backward(&xs, &g, dx.as_deref_mut())
        })?;
        let lora_grads = match (lora_grads, lora) {
            (Some((da, db)), Some((a, b))) => Some((tensor(da, a)?, tensor(db, b)?)),
            _ => None,
        };
        let dx = dx.map(|dx| tensor(dx, x)).transpose()?;
        Ok((dx, lora_grads))
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "fused-frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(&storage_slice(x, lx)?, lx.shape(), x.dtype(), None)
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
        let (a, b) = (storage_slice(a, la)?, storage_slice(b, lb)?);
        self.forward(
            &storage_slice(x, lx)?,
            lx.shape(),
            x.dtype(),
            Some((&a, &b)),
        )
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

/// A frozen linear layer as the fused ops take it: weight [out, in], bias [out] and the
/// LoRA branch, if any.
#[derive(Clone, Copy)]
pub struct LinearParts<'a> {
    /// Weight [out_features, in_features].
    pub weight: &'a BaseWeight,
    /// Bias [out_features].
    pub bias: Option<&'a Tensor>,
    /// The LoRA branch.
    pub lora: Option<LoraParts<'a>>,
}

/// `x·Wᵀ + b (+ s·(x·Aᵀ)·Bᵀ)` for `x` [..., in]; gradients flow to `x` and to the LoRA
/// matrices only.
pub fn frozen_linear(x: &Tensor, parts: LinearParts) -> Result<Tensor> {
    let op = FrozenLinear {
        weight: contiguous(parts.weight)?,
        bias: parts.bias.map(Tensor::contiguous).transpose()?,
        scale: parts.lora.map_or(1.0, |l| l.scale as f32),
    };
    let x = x.contiguous()?;
    Ok(match parts.lora {
        Some(l) => x.apply_op3(&l.a.contiguous()?, &l.b.contiguous()?, op)?,
        None => x.apply_op1(op)?,
    })
}

/// The weight with a contiguous tensor (quantized blocks always are).
pub(super) fn contiguous(w: &BaseWeight) -> Result<BaseWeight> {
    Ok(match w {
        BaseWeight::Dense(t) => BaseWeight::Dense(t.contiguous()?),
        q => q.clone(),
    })
}
