//! AdamW with decoupled weight decay, as `torch.optim.AdamW` computes it. Its moments are
//! plain tensors so that checkpoints can save and restore them exactly. Variables held in a
//! half-precision type (mixed-precision training) get an f32 master copy here: updates too
//! small for bf16's 8-bit mantissa accumulate in it, and the variable receives its rounding.

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::error::Result;
use crate::model::ops::wide;

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
        let master = |v: &&Var| -> candle_core::Result<Option<Tensor>> {
            let t = v.as_tensor();
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
            *m = value.to_dtype(DType::F32)?;
        }
        var.set(&value.to_dtype(var.dtype())?)?;
        Ok(())
    }

    /// One update of every variable with its gradient `grads[i]` at learning rate `lr`.
    pub fn step(&mut self, vars: &[&Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let g = g.to_dtype(wide(var.dtype()))?;
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let update = ((&m / c1)? / denom)?;
            let decayed = (self.value(i, var) * (1.0 - lr * self.weight_decay))?;
            let next = (decayed - (update * lr)?)?;
            self.set_value(i, var, &next)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
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

/// The global L2 norm of `grads`.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0.0f64;
    for g in grads {
        total += g
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}
