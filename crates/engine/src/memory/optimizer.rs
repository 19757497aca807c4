//! What AdamW holds (`train::optimizer`): its state for every trained parameter, and during
//! a step the temporaries of the tensor it is updating, which come after the backward pass
//! has freed the activations.

use crate::error::Result;
use crate::peft::MethodKind;

/// f32 tensors the composed update (a GPU, or `PEFT_STUDIO_FUSED=generic`) holds at once
/// beside the state: both new moments, the update, its two scaled terms and the new value.
const COMPOSED_STEP_TEMPS: u64 = 6;
/// The CPU's one-pass update's: both new moments and the new value.
const ONE_PASS_STEP_TEMPS: u64 = 3;

/// The optimiser's bytes for `trainable` parameters held at `param_elem` bytes each: the
/// gradient and the zero-filled slot candle's backward pass adds it into, in the
/// parameter's dtype; both moments in f32; for a half-precision parameter its gradient's f32
/// copy and its f32 master copy.
pub fn state_bytes(trainable: u64, param_elem: u64) -> u64 {
    let half = if param_elem < 4 { 8 } else { 0 };
    trainable * (2 * param_elem + 8 + half)
}

/// The bytes of one trained parameter and the largest trained tensor's parameters: freeze
/// and full runs train base tensors (of `shapes`; freeze those `freeze_names` gives) in the
/// run's dtype, `elem` bytes; adapters are f32, their tensors small beside a step's
/// activations (0).
pub fn trained_tensors(
    kind: MethodKind,
    elem: u64,
    shapes: impl FnOnce() -> Vec<(String, Vec<usize>)>,
    freeze_names: impl FnOnce() -> Result<Vec<String>>,
) -> Result<(u64, u64)> {
    let names = match kind {
        MethodKind::Full => None,
        MethodKind::Freeze => Some(freeze_names()?),
        _ => return Ok((4, 0)),
    };
    let largest = shapes()
        .iter()
        .filter(|(name, _)| names.as_ref().is_none_or(|n| n.contains(name)))
        .map(|(_, dims)| dims.iter().product::<usize>() as u64)
        .max()
        .unwrap_or(0);
    Ok((elem, largest))
}

/// The step's temporaries for a largest tensor of `largest` parameters.
pub fn step_bytes(largest: u64, one_pass: bool) -> u64 {
    let temps = if one_pass {
        ONE_PASS_STEP_TEMPS
    } else {
        COMPOSED_STEP_TEMPS
    };
    largest * 4 * temps
}
