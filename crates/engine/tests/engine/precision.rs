//! bf16 mixed precision's optimiser: f32 master values keep the updates bf16 rounds away.

use candle_core::{DType, Device, Tensor, Var};
use peft_studio_engine::train::optimizer::AdamW;

/// 100 AdamW steps of ~1e-4 on a value of 1: bf16 (8 significant bits, spacing 2^-7 at 1)
/// would round every one of them away. With a master value the bf16 variable follows the
/// f32 variable's trajectory, rounded, and the master equals it bit for bit.
#[test]
fn master_values_keep_updates_bf16_rounds_away() {
    let dev = Device::Cpu;
    let ones = Tensor::ones(4, DType::F32, &dev).unwrap();
    let full = Var::from_tensor(&ones).unwrap();
    let half = Var::from_tensor(&ones.to_dtype(DType::BF16).unwrap()).unwrap();
    let mut a = AdamW::new(&[&full], 0.9, 0.999, 1e-8, 0.01).unwrap();
    let mut b = AdamW::new(&[&half], 0.9, 0.999, 1e-8, 0.01).unwrap();
    let g = Tensor::new(&[1f32, -1.0, 0.5, 2.0], &dev).unwrap();
    for _ in 0..100 {
        a.step(&[&full], std::slice::from_ref(&g), 1e-4).unwrap();
        // The gradient arrives in the variable's type, as backward gives it.
        b.step(&[&half], &[g.to_dtype(DType::BF16).unwrap()], 1e-4)
            .unwrap();
    }
    let want: Vec<f32> = full.as_tensor().to_vec1().unwrap();
    let master: Vec<f32> = b.value(0, &half).to_vec1().unwrap();
    assert_eq!(master, want, "the master value is the f32 trajectory");
    let rounded: Vec<f32> = half
        .as_tensor()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want_rounded: Vec<f32> = full
        .as_tensor()
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(rounded, want_rounded, "the variable holds its rounding");
    assert!(
        rounded.iter().all(|&x| x != 1.0),
        "every value moved: {rounded:?}"
    );
}
