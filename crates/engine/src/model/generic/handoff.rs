//! The gradients of base tensors a layer trains (freeze, full fine-tuning), handed from the
//! layer's backward pass to candle's graph without copying the tensors into the layer's op.
//!
//! Adapters' parameters reach a layer's op packed into one tensor, a copy that lives until
//! the backward pass: cheap for LoRA, a second copy of every weight for full fine-tuning.
//! A trained base tensor enters the graph instead through a node of one element, chained
//! into a token that the layer's op takes in its pack. candle's backward pass reaches a
//! node only after every node that reads it, so the layer's backward pass has run, and left
//! the tensor's gradient in its [`Sink`], when the node's own runs and hands it over.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{CustomOp2, DType, Tensor};

use crate::error::Result;
use crate::model::reentry::{precomputed_forward, Precomputed};

/// Where a layer's backward pass leaves one trained tensor's gradient.
#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Option<Tensor>>>);

impl Sink {
    fn slot(&self) -> candle_core::Result<MutexGuard<'_, Option<Tensor>>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("a gradient sink's lock is poisoned".into()))
    }

    /// Leaves `gradient` for the hand-off node.
    pub fn put(&self, gradient: Tensor) -> Result<()> {
        *self.slot()? = Some(gradient);
        Ok(())
    }

    fn take(&self) -> candle_core::Result<Tensor> {
        self.slot()?.take().ok_or_else(|| {
            candle_core::Error::Msg(
                "a trained tensor's gradient was not computed by its layer".into(),
            )
        })
    }
}

/// The node that carries one trained tensor: its value is the previous token's (zero), its
/// backward pass hands the tensor the gradient its sink holds.
struct Handoff {
    token: Precomputed,
    sink: Sink,
}

impl CustomOp2 for Handoff {
    fn name(&self) -> &'static str {
        "gradient-handoff"
    }

    precomputed_forward!(token; _t _tl, _w _wl);

    fn bwd(
        &self,
        previous: &Tensor,
        trained: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gradient = self.sink.take()?.to_dtype(trained.dtype())?;
        Ok((Some(previous.zeros_like()?), Some(gradient)))
    }
}

/// `t`'s sink where it is trained, its tensor and sink joining `trained`.
pub fn handed(t: &Tensor, trained: &mut Vec<(Tensor, Sink)>) -> Option<Sink> {
    let sink = t.is_variable().then(Sink::default)?;
    trained.push((t.clone(), sink.clone()));
    Some(sink)
}

/// A one-element zero in `dtype` that carries each trained tensor into the graph, to be
/// given the gradient its sink receives; `None` when nothing is trained.
pub fn token(trained: &[(Tensor, Sink)], dtype: DType) -> Result<Option<Tensor>> {
    let Some((first, _)) = trained.first() else {
        return Ok(None);
    };
    let zero = || Tensor::zeros(1, dtype, first.device());
    let mut token = zero()?;
    for (t, sink) in trained {
        let op = Handoff {
            token: Precomputed::new(zero()?),
            sink: sink.clone(),
        };
        token = token.apply_op2(t, op)?;
    }
    Ok(Some(token))
}
