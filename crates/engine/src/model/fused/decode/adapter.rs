//! A sequence's own LoRA adapter, held apart from the base: the low-rank matrices of every
//! adapted projection in f32, so that sequences with different adapters (or none) share one
//! base in a decoding step (S-LoRA's layout: the base products shared, the low-rank ones per
//! row).

use std::sync::Arc;

use super::super::weight::Weight;
use super::floats;
use crate::error::{EngineError, Result};
use crate::model::linear::Linear;
use crate::model::LlamaModel;

/// One projection's branch: `y += s·B·(A·x)`.
#[derive(Debug)]
pub struct Lora {
    /// A [r, in].
    a: Vec<f32>,
    /// B [out, r].
    b: Vec<f32>,
    rank: usize,
    scale: f32,
}

impl Lora {
    /// Adds the branch's output for `x` [rows, fan_in] to `y` [rows, out].
    pub(super) fn add(&self, x: &[f32], y: &mut [f32], fan_in: usize, out: usize) {
        let rows = x.len() / fan_in.max(1);
        let mut u = vec![0.0f32; rows * self.rank];
        Weight::F32(&self.a).forward_by_dots(x, &mut u, (rows, fan_in, self.rank), false);
        u.iter_mut().for_each(|v| *v *= self.scale);
        Weight::F32(&self.b).forward_by_dots(&u, y, (rows, self.rank, out), false);
    }
}

/// The LoRA branches of one adapter: per decoder layer, one per projection in the layer's
/// order (`Block::linears`), and the head's.
#[derive(Debug)]
pub struct RowAdapter {
    pub(super) layers: Vec<Vec<Option<Lora>>>,
    pub(super) head: Option<Lora>,
}

impl RowAdapter {
    /// The adapter attached to `model`, taken apart from its base; `None` when nothing is
    /// attached. Refuses, by name, what a decoding row cannot hold: DoRA, IA³, prompt or
    /// prefix tuning, bottleneck adapters, trained base weights.
    pub fn of(model: &LlamaModel) -> Result<Option<Arc<Self>>> {
        if let Some(why) = super::unsupported(model) {
            return Err(EngineError::config("adapter", why));
        }
        let layers: Vec<Vec<Option<Lora>>> = model
            .layers
            .iter()
            .map(|b| b.linears().into_iter().map(branch).collect())
            .collect::<Result<_>>()?;
        let head = branch(&model.lm_head)?;
        let any = head.is_some() || layers.iter().flatten().any(Option::is_some);
        Ok(any.then(|| Arc::new(Self { layers, head })))
    }
}

/// A linear layer's LoRA branch in f32, if it has one.
fn branch(linear: &Linear) -> Result<Option<Lora>> {
    let Some(l) = &linear.lora else {
        return Ok(None);
    };
    Ok(Some(Lora {
        a: floats(&l.a)?,
        b: floats(&l.b)?,
        rank: l.a.dim(0)?,
        scale: l.scale as f32,
    }))
}
