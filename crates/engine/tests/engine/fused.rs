//! Every fused CPU op (f32) against its composed reference (candle's ops, run in f64 so the
//! reference itself carries no f32 rounding): forward values and the gradients of every input.
//! Then whole models: each method's gradients through the fused path against the composed one.

use candle_core::{DType, Device, Tensor, Var};
use peft_studio_engine::model::blocks::{self, Attend};
use peft_studio_engine::model::family::Activation;
use peft_studio_engine::model::fused;
use peft_studio_engine::model::ForwardCtx;
use peft_studio_engine::ops::{self, SplitMix64};
use peft_studio_engine::peft::{MethodConfig, MethodKind, TargetModules};
use peft_studio_engine::train::batch_loss;

use crate::common::{gradient_examples, gradient_model};

fn random(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) * scale)
        .collect()
}

/// Runs `f` on variables made from `inputs` in `dtype`; returns the output and the gradients
/// of `sum(output · R)` (R fixed and random) with respect to each input, all as f64.
fn run(
    dtype: DType,
    inputs: &[(Vec<f64>, Vec<usize>)],
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|(data, shape)| {
            let t = Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).unwrap();
            Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
        })
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors);
    let r = Tensor::from_vec(random(out.elem_count(), 99, 1.0), out.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let grads = (&out * r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let g = vars
        .iter()
        .map(|v| {
            flat(
                grads
                    .get(v.as_tensor())
                    .expect("every input gets a gradient"),
            )
        })
        .collect();
    (flat(&out), g)
}

/// The fused op in f32 against the composed one in f64: forward and every gradient.
fn check(name: &str, inputs: &[(Vec<f64>, Vec<usize>)], f: &dyn Fn(&[Tensor]) -> Tensor, tol: f64) {
    let (out32, g32) = run(DType::F32, inputs, f);
    let (out64, g64) = run(DType::F64, inputs, f);
    let worst = |a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{name}: shapes differ");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let d = worst(&out32, &out64);
    assert!(d < tol, "{name}: forward differs by {d:e}");
    for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
        let d = worst(a, b);
        let scale = b.iter().map(|x| x.abs()).fold(1.0, f64::max);
        assert!(
            d < tol * scale,
            "{name}: gradient of input {i} differs by {d:e}"
        );
    }
}

fn input(shape: &[usize], seed: u64) -> (Vec<f64>, Vec<usize>) {
    (random(shape.iter().product(), seed, 1.0), shape.to_vec())
}

#[test]
fn fused_ops_apply_to_f32_and_half_precision_on_the_cpu() {
    if fused::kernels() != fused::Kernels::Cpu {
        return;
    }
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        assert!(fused::applies(&t.to_dtype(dtype).unwrap()), "{dtype:?}");
    }
    assert!(!fused::applies(&t.to_dtype(DType::F64).unwrap()));
}

#[test]
fn rms_norm_matches_its_composition() {
    let inputs = [input(&[3, 5, 16], 1), input(&[16], 2)];
    check(
        "rms_norm",
        &inputs,
        &|t| blocks::rms_norm(&t[0], &t[1], 1e-5, 0.0).unwrap(),
        1e-5,
    );
    // Gemma's `1 + w`, also on per-head rows (q/k norms).
    let inputs = [input(&[2, 5, 3, 8], 1), input(&[8], 2)];
    check(
        "rms_norm (1 + w)",
        &inputs,
        &|t| blocks::rms_norm(&t[0], &t[1], 1e-6, 1.0).unwrap(),
        1e-5,
    );
}

#[test]
fn gated_activations_match_their_composition() {
    let inputs = [input(&[4, 7, 24], 3), input(&[4, 7, 24], 4)];
    for act in [Activation::Silu, Activation::GeluTanh] {
        check(
            &format!("{act:?}"),
            &inputs,
            &|t| blocks::gated(&t[0], &t[1], act).unwrap(),
            1e-5,
        );
    }
}

/// Rotary tables for positions `start..start + len` in the rotate-half layout.
fn tables(start: usize, len: usize, d: usize, dtype: DType) -> (Tensor, Tensor) {
    let angle =
        |p: usize, j: usize| p as f64 / 10000f64.powf((2 * (j % (d / 2))) as f64 / d as f64);
    let grid = |f: fn(f64) -> f64| -> Tensor {
        let v: Vec<f64> = (start..start + len)
            .flat_map(|p| (0..d).map(move |j| f(angle(p, j))))
            .collect();
        Tensor::from_vec(v, (len, d), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    (grid(f64::cos), grid(f64::sin))
}

#[test]
fn rope_matches_its_composition() {
    let inputs = [input(&[2, 5, 3, 8], 5)];
    check(
        "rope",
        &inputs,
        &|t| {
            let (cos, sin) = tables(3, 5, 8, t[0].dtype());
            blocks::rope_heads(&t[0], &cos, &sin).unwrap()
        },
        1e-5,
    );
}

/// The composed path's additive mask: query i sees keys up to `keys − seq + i`, and no
/// more than `window` of them.
fn mask(seq: usize, keys: usize, window: Option<usize>, dtype: DType) -> Tensor {
    let v: Vec<f64> = (0..seq)
        .flat_map(|i| {
            (0..keys).map(move |j| {
                let pos = keys - seq + i;
                if j <= pos && window.is_none_or(|w| j + w > pos) {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(v, (seq, keys), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

#[test]
fn attention_matches_its_composition() {
    // Grouped queries (6 heads over 2 key heads), with and without earlier keys (a prefix
    // or a cache), a single decoded query, and more query rows than one block (64) of the
    // causal skipping.
    // causal skipping; plain, with a sliding window and another score factor (Gemma), and
    // with scores soft-capped (Gemma 2).
    let plain = Attend::causal(8);
    let sliding = Attend {
        scale: 0.25,
        window: Some(3),
        softcap: None,
    };
    let capped = Attend {
        softcap: Some(0.7),
        ..plain
    };
    for (seq, keys, attend) in [
        (5, 5, plain),
        (5, 8, plain),
        (1, 4, plain),
        (130, 130, plain),
        (70, 75, plain),
        (9, 9, sliding),
        (1, 6, sliding),
        (
            70,
            75,
            Attend {
                window: Some(40),
                ..sliding
            },
        ),
        (9, 9, capped),
        (70, 75, capped),
        (
            9,
            12,
            Attend {
                softcap: Some(0.7),
                ..sliding
            },
        ),
    ] {
        let inputs = [
            input(&[2, 6, seq, 8], 6),
            input(&[2, 2, keys, 8], 7),
            input(&[2, 2, keys, 8], 8),
        ];
        check(
            &format!("attention seq={seq} keys={keys} {attend:?}"),
            &inputs,
            &|t| {
                let windowed = attend.window.is_some() && seq < keys;
                let m = (seq > 1 || windowed).then(|| mask(seq, keys, attend.window, t[0].dtype()));
                blocks::attention(&t[0], &t[1], &t[2], m.as_ref(), attend).unwrap()
            },
            1e-5,
        );
    }
}

/// Random targets [n] (u32, seeded) below `vocab` and loss weights [n] that are 0 on every
/// `skip`-th row.
fn loss_targets(n: usize, vocab: usize, seed: u64, skip: usize) -> (Tensor, Tensor) {
    let mut rng = SplitMix64::new(seed);
    let targets: Vec<u32> = (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    let weights: Vec<f32> = (0..n)
        .map(|i| if i % skip == 0 { 0.0 } else { 1.0 })
        .collect();
    (
        Tensor::from_vec(targets, n, &Device::Cpu).unwrap(),
        Tensor::from_vec(weights, n, &Device::Cpu).unwrap(),
    )
}

#[test]
fn lm_head_cross_entropy_matches_its_composition() {
    // Rows with weight 0 are skipped by the fused loss and must get a zero gradient; more rows
    // than one chunk (64), a vocabulary larger than the width.
    let (n, h, vocab) = (150, 16, 70);
    let (targets, weights) = loss_targets(n, vocab, 9, 3);
    let inputs = [input(&[n, h], 10), input(&[vocab, h], 11)];
    // The head weight is frozen: its gradient comes from the composed path in both dtypes.
    let (loss32, g32) = run(DType::F32, &inputs[..1], &|t| {
        let w = Tensor::from_vec(inputs[1].0.clone(), (vocab, h), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        // The logits whole only where the fused ops are off (`PEFT_STUDIO_FUSED=off`).
        let whole = |h: &Tensor| Ok(h.matmul(&w.t()?)?);
        blocks::head_loss(
            &t[0],
            Some(&w.clone().into()),
            whole,
            &targets,
            &weights,
            None,
        )
        .unwrap()
        .0
    });
    let (loss64, g64) = run(DType::F64, &inputs[..1], &|t| {
        let w = Tensor::from_vec(inputs[1].0.clone(), (vocab, h), &Device::Cpu).unwrap();
        let logits = t[0].matmul(&w.t().unwrap()).unwrap();
        ops::masked_cross_entropy(&logits, &targets, &weights)
            .unwrap()
            .0
    });
    assert!(
        (loss32[0] - loss64[0]).abs() < 1e-5,
        "loss {loss32:?} vs {loss64:?}"
    );
    let worst = g32[0]
        .iter()
        .zip(&g64[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "hidden gradient differs by {worst:e}");
    for row in (0..n).step_by(3) {
        assert!(
            g32[0][row * h..][..h].iter().all(|&g| g == 0.0),
            "row {row} has weight 0"
        );
    }
    // A token id outside the vocabulary is an error, not a panic.
    let bad = Tensor::from_vec(vec![vocab as u32; n], n, &Device::Cpu).unwrap();
    let hidden = Tensor::zeros((n, h), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((vocab, h), DType::F32, &Device::Cpu)
        .unwrap()
        .into();
    let err = fused::cross_entropy::lm_head_cross_entropy(&hidden, &w, &bad, &weights, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the model's vocabulary"), "{err}");
}

/// A trained head (full fine-tuning, a freeze run training the head): the fused loss also
/// gives the head weight's gradient, summed over chunks and vocabulary slices; plain, and
/// with the logits soft-capped (Gemma 2).
#[test]
fn trained_lm_head_cross_entropy_matches_its_composition() {
    let (n, h, vocab) = (300, 16, 70);
    let (targets, weights) = loss_targets(n, vocab, 12, 4);
    let inputs = [input(&[n, h], 13), input(&[vocab, h], 14)];
    for cap in [None, Some(1.5)] {
        check(
            &format!("trained lm head, cap {cap:?}"),
            &inputs,
            &|t| {
                let whole = |x: &Tensor| {
                    let logits = x.matmul(&t[1].t()?)?;
                    Ok(match cap {
                        Some(c) => ((logits / c)?.tanh()? * c)?,
                        None => logits,
                    })
                };
                let w = Some(t[1].clone().into());
                blocks::head_loss(&t[0], w.as_ref(), whole, &targets, &weights, cap)
                    .unwrap()
                    .0
            },
            1e-5,
        );
    }
}

/// Under `PEFT_STUDIO_FUSED=generic` (the test command's run of what a GPU runs) a
/// CPU-only kernel refuses to run: the engine tests passing there prove none was reached.
#[test]
fn cpu_only_kernels_are_refused_in_the_generic_mode() {
    if fused::kernels() != fused::Kernels::Generic {
        return;
    }
    let x = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones((3, 4), DType::F32, &Device::Cpu)
        .unwrap()
        .into();
    let parts = fused::linear::LinearParts {
        weight: &w,
        bias: None,
        lora: None,
    };
    let err = fused::linear::frozen_linear(&x, parts).unwrap_err();
    assert!(err.to_string().contains("CPU-only kernel"), "{err}");
}

#[test]
fn frozen_linear_with_lora_matches_its_composition() {
    if fused::kernels() == fused::Kernels::Generic {
        return;
    }
    // 2 × 5 rows go through the matrix product, 1 × 3 (a decoding step's shape) through
    // one dot product per output.
    for rows in [[2, 5], [1, 3]] {
        frozen_linear_matches_its_composition_for(rows);
    }
}

fn frozen_linear_matches_its_composition_for(rows: [usize; 2]) {
    let (fan_in, out, r) = (12, 10, 3);
    let weight = random(out * fan_in, 12, 0.5);
    let bias = random(out, 13, 0.5);
    let inputs = [
        input(&[rows[0], rows[1], fan_in], 14),
        input(&[r, fan_in], 15),
        input(&[out, r], 16),
    ];
    let constant = |data: &[f64], shape: &[usize], dtype: DType| {
        Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    for with_lora in [false, true] {
        let f = |t: &[Tensor]| -> Tensor {
            let dtype = t[0].dtype();
            let w = constant(&weight, &[out, fan_in], dtype);
            let b = constant(&bias, &[out], dtype);
            if dtype == DType::F32 {
                let w = w.clone().into();
                let lora = with_lora.then(|| fused::linear::LoraParts {
                    a: &t[1],
                    b: &t[2],
                    scale: 0.75,
                    magnitude: None,
                });
                let parts = fused::linear::LinearParts {
                    weight: &w,
                    bias: Some(&b),
                    lora,
                };
                return fused::linear::frozen_linear(&t[0], parts).unwrap();
            }
            let y = t[0]
                .broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            if !with_lora {
                return y;
            }
            let delta = t[0]
                .broadcast_matmul(&t[1].t().unwrap())
                .unwrap()
                .broadcast_matmul(&t[2].t().unwrap())
                .unwrap();
            (y + (delta * 0.75).unwrap()).unwrap()
        };
        if with_lora {
            check("lora linear", &inputs, &f, 1e-5);
        } else {
            check("frozen linear", &inputs[..1], &f, 1e-5);
        }
    }
}

/// Loss and every trainable gradient of `method` on a tiny model, in `dtype`.
fn model_gradients(method: &MethodConfig, dtype: DType) -> (f64, Vec<(String, Vec<f64>)>) {
    model_gradients_with(method, dtype, ForwardCtx::eval())
}

/// [`model_gradients`] in the forward context `ctx` (dropout, checkpointing).
fn model_gradients_with(
    method: &MethodConfig,
    dtype: DType,
    ctx: ForwardCtx,
) -> (f64, Vec<(String, Vec<f64>)>) {
    let dir = tempfile::tempdir().unwrap();
    let (model, vars) = gradient_model(dir.path(), method, dtype);
    loss_and_gradients(&model, &vars, ctx)
}

fn loss_and_gradients(
    model: &peft_studio_engine::model::LlamaModel,
    vars: &peft_studio_engine::peft::Trainables,
    ctx: ForwardCtx,
) -> (f64, Vec<(String, Vec<f64>)>) {
    let examples = gradient_examples();
    let batch = examples.batch_at(0, &Device::Cpu).unwrap();
    let (loss, _) = batch_loss(model, &batch, &ctx).unwrap();
    let grads = loss.backward().unwrap();
    let value = loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let g = vars
        .iter()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).unwrap();
            let v = g
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            (name.clone(), v)
        })
        .collect();
    (value, g)
}

/// Asserts that every gradient in `got` is within `rel` of the largest entry (at least
/// `floor`) of the same gradient in `want`.
fn assert_gradients_close(
    label: &str,
    got: &[(String, Vec<f64>)],
    want: &[(String, Vec<f64>)],
    rel: f64,
    floor: f64,
) {
    assert_eq!(got.len(), want.len(), "{label}: gradient count");
    for ((name, a), (_, b)) in got.iter().zip(want) {
        let scale = b.iter().map(|x| x.abs()).fold(floor, f64::max);
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(
            d <= rel * scale,
            "{label} {name}: gradient differs by {d:e} (scale {scale:e})"
        );
    }
}

/// One of each way a method reaches the fused ops: LoRA without dropout and prompt tuning
/// run each decoder layer as one op (`fused::layer`); the others compose the single ops.
/// The device-generic layer serves every one whole.
fn fused_methods() -> [MethodConfig; 10] {
    let targets = |s: &str| Some(TargetModules::parse_cli(s));
    [
        MethodConfig {
            kind: MethodKind::Lora,
            r: 4,
            lora_alpha: 8.0,
            target_modules: targets("all-linear"),
            ..Default::default()
        },
        // Some projections of a layer with LoRA, some without: the packed layout.
        MethodConfig {
            kind: MethodKind::Lora,
            r: 2,
            lora_alpha: 3.0,
            target_modules: targets("k_proj,o_proj,up_proj"),
            ..Default::default()
        },
        MethodConfig {
            kind: MethodKind::Lora,
            r: 4,
            lora_alpha: 8.0,
            use_dora: true,
            target_modules: targets("q_proj,v_proj"),
            ..Default::default()
        },
        MethodConfig {
            kind: MethodKind::Ia3,
            ..Default::default()
        },
        MethodConfig {
            kind: MethodKind::PromptTuning,
            num_virtual_tokens: 3,
            ..Default::default()
        },
        MethodConfig {
            kind: MethodKind::PrefixTuning,
            num_virtual_tokens: 3,
            ..Default::default()
        },
        MethodConfig {
            kind: MethodKind::Houlsby,
            reduction_factor: 4,
            ..Default::default()
        },
        MethodConfig {
            kind: MethodKind::Pfeiffer,
            reduction_factor: 4,
            ..Default::default()
        },
        MethodConfig {
            kind: MethodKind::Full,
            ..Default::default()
        },
        // The last layer's weights and norms trained, the others frozen.
        MethodConfig {
            kind: MethodKind::Freeze,
            trainable_last_layers: 1,
            ..Default::default()
        },
    ]
}

/// Whether the family test also runs `method` with gradient checkpointing: one of each kind
/// of parameter a layer trains (LoRA's, a bottleneck adapter's, base weights and norms).
fn checkpointed(method: &MethodConfig) -> bool {
    matches!(method.kind, MethodKind::Houlsby | MethodKind::Full)
        || (method.kind == MethodKind::Lora && !method.use_dora && method.r == 4)
}

/// The families' parts through the fused ops — the whole layer (norms with `1 + w`, q/k
/// norms, the sublayers' output norms, GeGLU, windowed attention with Gemma's score factor,
/// a sliding layer's own rotary base) and the single ops — against the composed ops in f64;
/// in f32, with gradient checkpointing (the layer recomputed), and in bf16.
#[test]
fn every_family_trains_the_same_through_the_fused_ops() {
    for spec in crate::common::family_specs() {
        for method in &fused_methods() {
            let run = |dtype, ctx| {
                let dir = tempfile::tempdir().unwrap();
                let (model, vars) =
                    crate::common::gradient_model_of(dir.path(), method, dtype, &spec);
                loss_and_gradients(&model, &vars, ctx)
            };
            let (l64, g64) = run(DType::F64, ForwardCtx::eval());
            let label = format!("{} {:?}", spec.architecture, method.kind);
            let (l32, g32) = run(DType::F32, ForwardCtx::eval());
            assert!((l32 - l64).abs() < 1e-4, "{label}: loss {l32} vs {l64}");
            assert_gradients_close(&label, &g32, &g64, 1e-3, 1e-3);
            if checkpointed(method) {
                let (lc, gc) = run(DType::F32, ForwardCtx::eval().with_checkpointing(true));
                assert!(
                    (lc - l64).abs() < 1e-4,
                    "{label} checkpointed: loss {lc} vs {l64}"
                );
                assert_gradients_close(&format!("{label} checkpointed"), &gc, &g64, 1e-3, 1e-3);
            }
            let (l16, g16) = run(DType::BF16, ForwardCtx::eval());
            assert!(
                (l16 - l64).abs() < 1e-2,
                "{label} bf16: loss {l16} vs {l64}"
            );
            // Pfeiffer's relu: a pre-activation within bf16's rounding of zero flips its
            // slope, which moves its down projection's gradient by 15-40% of the largest
            // entry on these tiny models on every path (composed ops included); its loss is
            // held, its gradients in f32 above.
            if method.kind != MethodKind::Pfeiffer {
                assert_gradients_close(&format!("{label} bf16"), &g16, &g64, 8e-2, 1e-3);
            }
        }
    }
}

#[test]
fn every_method_trains_the_same_through_the_fused_ops() {
    for method in &fused_methods() {
        let (l32, g32) = model_gradients(method, DType::F32);
        let (l64, g64) = model_gradients(method, DType::F64);
        assert!(
            (l32 - l64).abs() < 1e-4,
            "{:?}: loss {l32} vs {l64}",
            method.kind
        );
        assert_gradients_close(&format!("{:?}", method.kind), &g32, &g64, 1e-3, 1e-3);
    }
}

/// In bf16 the fused kernels widen each tensor they read to f32 and round their results to
/// bf16: loss and gradients stay within bf16's precision of the f64 reference (measured:
/// loss within 2.6e-3, gradients within 5% of their largest entry, as close as the
/// composed ops in bf16, which `PEFT_STUDIO_FUSED=off` runs here).
#[test]
fn every_method_trains_the_same_through_the_fused_ops_in_bf16() {
    for method in &fused_methods() {
        let (l16, g16) = model_gradients(method, DType::BF16);
        let (l64, g64) = model_gradients(method, DType::F64);
        let label = format!("{:?} bf16", method.kind);
        assert!((l16 - l64).abs() < 1e-2, "{label}: loss {l16} vs {l64}");
        assert_gradients_close(&label, &g16, &g64, 8e-2, 1e-3);
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let ctx = |on| ForwardCtx::train(9).with_checkpointing(on);
    for dropout in [0.0, 0.25] {
        let method = MethodConfig {
            kind: MethodKind::Lora,
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: dropout,
            target_modules: Some(TargetModules::parse_cli("all-linear")),
            ..Default::default()
        };
        let (kept_loss, kept) = model_gradients_with(&method, DType::F32, ctx(false));
        let (loss, recomputed) = model_gradients_with(&method, DType::F32, ctx(true));
        assert_eq!(loss, kept_loss);
        assert_gradients_close("recomputed", &recomputed, &kept, 1e-6, 1e-6);
    }
}

/// LoRA dropout inside the fused layer draws the masks the composed ops draw (same order,
/// same streams), so f32 fused and f64 composed training agree with dropout on.
#[test]
fn lora_dropout_in_the_fused_layer_matches_the_composed_ops() {
    // DoRA too: its base term then takes the dropped-out input (the CPU composes single
    // fused ops for it; the device-generic layer serves it whole).
    for use_dora in [false, true] {
        let method = MethodConfig {
            kind: MethodKind::Lora,
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.3,
            use_dora,
            target_modules: Some(TargetModules::parse_cli("q_proj,v_proj,o_proj,down_proj")),
            ..Default::default()
        };
        let (l32, g32) = model_gradients_with(&method, DType::F32, ForwardCtx::train(3));
        let (l64, g64) = model_gradients_with(&method, DType::F64, ForwardCtx::train(3));
        let (l_off, _) = model_gradients_with(&method, DType::F32, ForwardCtx::eval());
        assert!(
            (l32 - l64).abs() < 1e-4,
            "dora {use_dora}: loss {l32} vs {l64}"
        );
        assert!(
            (l32 - l_off).abs() > 1e-6,
            "dora {use_dora}: dropout changed nothing"
        );
        assert_gradients_close(&format!("dropout, dora {use_dora}"), &g32, &g64, 1e-3, 1e-3);
    }
}

/// The kernel bf16 weights are multiplied on is one this CPU runs: AMX's tiles wherever it
/// has them; the dot products only where `PEFT_STUDIO_BF16_PRODUCTS=on` asks for them or they
/// were timed faster than widening to f32; none when it is `off` or the CPU has no
/// AVX-512-BF16 (then the weights are widened, which `available` says).
#[test]
fn the_bf16_kernel_is_one_this_cpu_runs_and_amx_where_it_has_it() {
    use peft_studio_engine::model::fused::bf16_matmul::{available, Kernel};
    let (kernels, best) = (Kernel::available(), Kernel::best());
    eprintln!("bf16 kernels {kernels:?}, chosen {best:?}");
    assert_eq!(available(), best.is_some());
    match best {
        Some(kernel) => assert!(kernels.contains(&kernel)),
        None => assert!(
            !kernels.contains(&Kernel::Tiles),
            "tiles exist but were not chosen"
        ),
    }
    if kernels.contains(&Kernel::Tiles) {
        assert_eq!(best, Some(Kernel::Tiles));
    }
    let setting = std::env::var("PEFT_STUDIO_BF16_PRODUCTS").unwrap_or_default();
    if setting == "on" {
        assert_eq!(best, kernels.first().copied());
    }
    if setting == "off" {
        assert!(kernels.is_empty() && best.is_none());
    }
}

/// The bf16 products, on every kernel this CPU has (AMX tiles, AVX-512-BF16 dot products),
/// against f64 products of the same bf16-rounded operands: only f32 accumulation separates
/// them. Odd `k`, `k` short of whole tiles, partial panels and row blocks, both packings, on
/// all threads and on one.
#[test]
fn bf16_products_match_f64_products_of_the_rounded_operands() {
    use half::bf16;
    use peft_studio_engine::model::fused::bf16_matmul::{matmul_with, matmul_wt, Kernel, Packed};
    let kernels = Kernel::available();
    if kernels.is_empty() {
        eprintln!("skipped: this CPU has no AVX-512-BF16");
        return;
    }
    if !kernels.contains(&Kernel::Tiles) {
        eprintln!("AMX tiles not tested: this CPU (or its kernel) has no AMX-BF16");
    }
    let round = |v: &[f64]| -> Vec<bf16> { v.iter().map(|&x| bf16::from_f64(x)).collect() };
    for (m, k, n) in [
        (1, 1, 1),
        (9, 7, 33),
        (37, 64, 32),
        (130, 301, 70),
        (256, 576, 192),
        (70, 1000, 100),
        (64, 2048, 96),
        (45, 128, 64),
    ] {
        for &kernel in kernels {
            let a = random(m * k, 1, 1.0);
            let w = round(&random(n * k, 2, 1.0));
            let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let a_rounded: Vec<f64> = a32.iter().map(|&x| bf16::from_f32(x).to_f64()).collect();
            let wf = |i: usize| w[i].to_f64();
            // x·Wᵀ with W [n, k] (packed, and with the weight's rows as they are where the
            // best kernel is AMX and k and n are multiples of 32), then g·W with W as
            // [k', n'] = [n, k].
            let mut y = vec![0.5f32; m * n];
            matmul_with(
                kernel,
                &mut y,
                &a32,
                &Packed::transposed(&w, n, k),
                true,
                true,
            );
            let mut y_wt = vec![0.5f32; m * n];
            matmul_wt(
                &mut y_wt,
                &a32,
                &w,
                (n, k),
                true,
                kernel == Kernel::DotProducts,
            );
            for (i, (y, y_wt)) in y.iter().zip(&y_wt).enumerate() {
                // Both are within this of the f64 product (checked below for `y`).
                assert!(
                    (y - y_wt).abs() < 2e-5 * (k as f64).sqrt() as f32 * 4.0,
                    "{kernel:?} {m}x{k}x{n} wt {i}: {y} vs {y_wt}"
                );
            }
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = 0.5
                        + (0..k)
                            .map(|t| a_rounded[i * k + t] * wf(j * k + t))
                            .sum::<f64>();
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-5 * (k as f64).sqrt() * 4.0,
                        "{kernel:?} {m}x{k}x{n} xWt ({i},{j}): {got} vs {want}"
                    );
                }
            }
            let g = random(m * n, 3, 1.0);
            let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            let g_rounded: Vec<f64> = g32.iter().map(|&x| bf16::from_f32(x).to_f64()).collect();
            let mut dx = vec![f32::NAN; m * k];
            matmul_with(
                kernel,
                &mut dx,
                &g32,
                &Packed::plain(&w, n, k),
                false,
                false,
            );
            for i in 0..m {
                for t in 0..k {
                    let want: f64 = (0..n).map(|j| g_rounded[i * n + j] * wf(j * k + t)).sum();
                    let got = dx[i * k + t] as f64;
                    assert!(
                        (got - want).abs() < 1e-5 * (n as f64).sqrt() * 4.0,
                        "{kernel:?} {m}x{n}x{k} gW ({i},{t}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
