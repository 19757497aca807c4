//! `x @ Wᵀ` for a frozen weight, with a backward that returns dL/dx only.
//!
//! candle's matmul backward always computes the weight gradient too, even for a weight no
//! one trains: a third of the linear layers' training FLOPs and a weight-sized buffer per
//! layer, wasted. Here the product is computed outside the graph and re-enters it through a
//! custom op whose backward is `dL/dx = dL/dy · W`.

use candle_core::{CustomOp1, Tensor};

use super::base_weight::BaseWeight;
use super::reentry::{precomputed_forward, Precomputed};
use crate::error::Result;
use crate::ops::linear_matmul;

struct FrozenProduct {
    weight: BaseWeight,
    product: Precomputed,
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    precomputed_forward!(product; _x _xl);

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // grad [..., out] · W [out, in] = [..., in]
        let dims = grad.dims();
        let out = dims[dims.len() - 1];
        let rows = grad.elem_count() / out.max(1);
        // A quantized weight is widened for this product only.
        let weight = self.weight.dense()?;
        let gx = grad.reshape((rows, out))?.matmul(&weight)?;
        let mut in_dims = dims.to_vec();
        let last = in_dims.len() - 1;
        in_dims[last] = self.weight.dims().1;
        Ok(Some(gx.reshape(in_dims)?))
    }
}

/// `x @ wᵀ` where `w` is never trained. Falls back to the plain product when no gradient
/// flows through `x` (inference, or layers below every trainable tensor).
pub fn frozen_linear(x: &Tensor, w: &BaseWeight) -> Result<Tensor> {
    if super::fused::applies(x) {
        let parts = super::fused::linear::LinearParts {
            weight: w,
            bias: None,
            lora: None,
        };
        return super::fused::linear::frozen_linear(x, parts);
    }
    let dense = w.dense()?;
    if !x.track_op() {
        return linear_matmul(x, &dense);
    }
    let product = linear_matmul(&x.detach(), &dense)?;
    Ok(x.apply_op1(FrozenProduct {
        weight: w.clone(),
        product: Precomputed::new(product),
    })?)
}
