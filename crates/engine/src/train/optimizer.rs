//! AdamW with decoupled weight decay, as `torch.optim.AdamW` computes it. Its moments are
//! plain tensors so that checkpoints can save and restore them exactly. Variables held in a
//! half-precision type (mixed-precision training) get an f32 master copy here: updates too
//! small for bf16's 8-bit mantissa accumulate in it, and the variable receives its rounding.

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::error::Result;
use crate::model::fused::view::view;
use crate::ops::{host_scalar, wide};

/// Optimiser state for a list of variables.
#[derive(Debug)]
pub struct AdamW {
    /// First moments, one per variable (f32 for half-precision variables).
    pub m: Vec<Tensor>,
    /// Second moments, one per variable (likewise).
    pub v: Vec<Tensor>,
    /// The f32 values of half-precision variables (`None` for the others).
    master: Vec<Option<Tensor>>,
    /// Steps taken so far (for bias correction).
    pub t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// Zero moments for `vars`, and f32 master copies of those in a half-precision type.
    pub fn new(vars: &[&Var], beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Result<Self> {
        let zeros = |v: &&Var| v.as_tensor().to_dtype(wide(v.dtype()))?.zeros_like();
        // Detached: converted from the variable, the copy would record it as its input, and
        // every update computed from it would chain onto the last step's values.
        let master = |v: &&Var| -> candle_core::Result<Option<Tensor>> {
            let t = v.as_tensor().detach();
            (wide(t.dtype()) != t.dtype())
                .then(|| t.to_dtype(DType::F32))
                .transpose()
        };
        Ok(Self {
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            master: vars
                .iter()
                .map(master)
                .collect::<candle_core::Result<_>>()?,
            t: 0,
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }

    /// The value of variable `i` the optimiser works on: its master copy, or the variable.
    pub fn value(&self, i: usize, var: &Var) -> Tensor {
        match &self.master[i] {
            Some(m) => m.clone(),
            None => var.as_tensor().detach(),
        }
    }

    /// Sets variable `i` to `value` (as a checkpoint holds it): the master copy exactly, the
    /// variable rounded to its type.
    pub fn set_value(&mut self, i: usize, var: &Var, value: &Tensor) -> Result<()> {
        if let Some(m) = &mut self.master[i] {
            *m = value.detach().to_dtype(DType::F32)?;
        }
        var.set(&value.to_dtype(var.dtype())?)?;
        Ok(())
    }

    /// One update of every variable with its gradient `grads[i]` at learning rate `lr`.
    pub fn step(&mut self, vars: &[&Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_scaled(vars, grads, lr, 1.0)
    }

    /// [`Self::step`] with every gradient multiplied by `scale` (the mean over accumulated
    /// micro-batches and the clipping factor, applied here rather than by scaled copies of
    /// the gradients, which would take as much memory again as the gradients).
    pub fn step_scaled(
        &mut self,
        vars: &[&Var],
        grads: &[Tensor],
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        let k = Coefficients {
            b1,
            b2,
            c1,
            c2,
            eps: self.eps,
            lr,
            decay: 1.0 - lr * self.weight_decay,
            scale,
        };
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let g = g.to_dtype(wide(var.dtype()))?;
            let value = self.value(i, var);
            let (m, v, next) = match fused_update(&value, &g, &self.m[i], &self.v[i], &k)? {
                Some(updated) => updated,
                None => {
                    let g = if scale == 1.0 { g } else { (g * scale)? };
                    let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
                    let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let denom = ((&v / c2)?.sqrt()? + self.eps)?;
                    let update = ((&m / c1)? / denom)?;
                    let next = ((value * k.decay)? - (update * lr)?)?;
                    (m, v, next)
                }
            };
            self.set_value(i, var, &next)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// One step's constants: the moments' decays and bias corrections, epsilon, the learning
/// rate and the weight decay's factor.
struct Coefficients {
    b1: f64,
    b2: f64,
    c1: f64,
    c2: f64,
    eps: f64,
    lr: f64,
    decay: f64,
    /// The factor every gradient is multiplied by first.
    scale: f64,
}

/// The new first and second moments and value of one variable in one pass over its elements
/// (the composed ops make a tensor per operation: for full fine-tuning, a dozen passes over
/// 135M floats), when all four are f32 CPU tensors; `None` elsewhere (a GPU, or
/// `PEFT_STUDIO_FUSED=off`). Each element is computed as the composed ops compute it.
fn fused_update(
    value: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &Coefficients,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    use rayon::prelude::*;
    let f32_cpu = |t: &&Tensor| crate::model::fused::applies(t) && t.dtype() == DType::F32;
    if ![value, g, m, v].iter().all(f32_cpu) {
        return Ok(None);
    }
    let (value, g, m, v) = (
        value.contiguous()?,
        g.contiguous()?,
        m.contiguous()?,
        v.contiguous()?,
    );
    let views = (view(&value)?, view(&g)?, view(&m)?, view(&v)?);
    // Plain slices for the loop: indexing through the views would re-borrow the storage at
    // every element.
    let (p, g, m, v): (&[f32], &[f32], &[f32], &[f32]) = (&views.0, &views.1, &views.2, &views.3);
    if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
        return Ok(None);
    }
    let f = |x: f64| x as f32;
    let (b1, nb1, b2, nb2) = (f(k.b1), f(1.0 - k.b1), f(k.b2), f(1.0 - k.b2));
    let (ic1, ic2, eps, lr, decay) = (f(1.0 / k.c1), f(1.0 / k.c2), f(k.eps), f(k.lr), f(k.decay));
    let scale = f(k.scale);
    let n = p.len();
    let (mut m2, mut v2, mut next) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    const CHUNK: usize = 1 << 16;
    next.par_chunks_mut(CHUNK)
        .zip(m2.par_chunks_mut(CHUNK))
        .zip(v2.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((next, m2), v2))| {
            let o = c * CHUNK;
            for j in 0..next.len() {
                let (gi, i) = (g[o + j] * scale, o + j);
                let mi = m[i] * b1 + gi * nb1;
                let vi = v[i] * b2 + (gi * gi) * nb2;
                let update = (mi * ic1) / ((vi * ic2).sqrt() + eps);
                m2[j] = mi;
                v2[j] = vi;
                next[j] = p[i] * decay - update * lr;
            }
        });
    let shape = value.shape().clone();
    let tensor = |data: Vec<f32>| Tensor::from_vec(data, shape.clone(), value.device());
    Ok(Some((tensor(m2)?, tensor(v2)?, tensor(next)?)))
}

/// The gradient of each variable, zeros where the loss does not depend on it; in f32 for
/// half-precision variables (accumulated, clipped and applied in f32).
pub fn collect_grads(vars: &[&Var], store: &GradStore) -> Result<Vec<Tensor>> {
    vars.iter()
        .map(|v| match store.get(v.as_tensor()) {
            Some(g) => Ok(g.to_dtype(wide(v.dtype()))?),
            None => Ok(v.as_tensor().to_dtype(wide(v.dtype()))?.zeros_like()?),
        })
        .collect()
}

/// The global L2 norm of `grads`. Where the fused CPU kernels run, an f32 gradient is
/// summed in f64 as it lies (not widened into an f64 copy twice its size); elsewhere each
/// gradient's sum of squares stays on its device in f32 and one transfer reads them all,
/// not one per variable (an f64 gradient, the CPU reference, is summed in f64).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0.0f64;
    let mut on_device = Vec::new();
    for g in grads {
        if crate::model::fused::applies(g) && g.dtype() == DType::F32 {
            let g = g.contiguous()?;
            total += view(&g)?.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        } else if g.device().is_cpu() && g.dtype() == DType::F64 {
            total += g.sqr()?.sum_all()?.to_scalar::<f64>()?;
        } else {
            on_device.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
    }
    if !on_device.is_empty() {
        total += host_scalar(&Tensor::stack(&on_device, 0)?.sum_all()?)?;
    }
    Ok(total.sqrt())
}
