//! A tensor computed outside candle's graph re-enters it through a custom op: the op's
//! forward pass hands back the precomputed result on whatever device it lies, and its
//! backward pass is written by hand. The result is given up on first use, so the op does
//! not keep a second copy alive until the backward pass.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, MetalStorage, Shape, Storage, Tensor};

/// The precomputed result of an op.
pub struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    /// Holds `result` until the op's forward pass takes it.
    pub fn new(result: Tensor) -> Self {
        Self(Mutex::new(Some(result)))
    }

    fn take<S>(
        &self,
        pick: impl Fn(&Storage, &candle_core::Layout) -> Option<candle_core::Result<S>>,
    ) -> candle_core::Result<(S, Shape)> {
        let result = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("precomputed result: poisoned lock".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("precomputed result used twice".into()))?;
        let (storage, layout) = result.storage_and_layout();
        match pick(&storage, layout) {
            Some(s) => Ok((s?, layout.shape().clone())),
            None => candle_core::bail!("precomputed result on an unexpected device"),
        }
    }

    /// The result as CPU storage.
    pub fn cpu(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        self.take(|s, l| match s {
            Storage::Cpu(c) => Some(c.try_clone(l)),
            _ => None,
        })
    }

    /// The result as CUDA storage.
    pub fn cuda(&self) -> candle_core::Result<(CudaStorage, Shape)> {
        self.take(|s, l| match s {
            Storage::Cuda(c) => Some(c.try_clone(l)),
            _ => None,
        })
    }

    /// The result as Metal storage.
    pub fn metal(&self) -> candle_core::Result<(MetalStorage, Shape)> {
        self.take(|s, l| match s {
            Storage::Metal(c) => Some(c.try_clone(l)),
            _ => None,
        })
    }
}

/// The forward functions of a custom op whose result is the [`Precomputed`] `self.$field`,
/// on every device. The op's inputs are named in pairs (storage, layout), one pair per input
/// of the `CustomOp1`, `CustomOp2` or `CustomOp3`: `precomputed_forward!(output; _x _xl)`.
macro_rules! precomputed_forward {
    ($field:ident; $($s:ident $l:ident),+) => {
        fn cpu_fwd(
            &self,
            $($s: &candle_core::CpuStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            self.$field.cpu()
        }

        fn cuda_fwd(
            &self,
            $($s: &candle_core::CudaStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            self.$field.cuda()
        }

        fn metal_fwd(
            &self,
            $($s: &candle_core::MetalStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::MetalStorage, candle_core::Shape)> {
            self.$field.metal()
        }
    };
}
pub(crate) use precomputed_forward;
