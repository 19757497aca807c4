//! AdamW with decoupled weight decay, as `torch.optim.AdamW` computes it. Its moments are
//! plain tensors so that checkpoints can save and restore them exactly.

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::Result;

/// Optimiser state for a list of variables.
#[derive(Debug)]
pub struct AdamW {
    /// First moments, one per variable.
    pub m: Vec<Tensor>,
    /// Second moments, one per variable.
    pub v: Vec<Tensor>,
    /// Steps taken so far (for bias correction).
    pub t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new(vars: &[&Var], beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Result<Self> {
        let zeros = |v: &&Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            t: 0,
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }

    /// One update of every variable with its gradient `grads[i]` at learning rate `lr`.
    pub fn step(&mut self, vars: &[&Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let update = ((&m / c1)? / denom)?;
            let decayed = (var.as_tensor() * (1.0 - lr * self.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// The gradient of each variable, zeros where the loss does not depend on it.
pub fn collect_grads(vars: &[&Var], store: &GradStore) -> Result<Vec<Tensor>> {
    vars.iter()
        .map(|v| match store.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Ok(v.as_tensor().zeros_like()?),
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
