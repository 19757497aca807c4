//! T5 against transformers: tiny v1.0 (ReLU, tied and scaled head) and v1.1 (gated-GELU, its
//! own head, a deeper decoder) checkpoints made by transformers
//! (`fixtures/reference/t5/make.py`), their logits, loss and encoder output; LoRA and IA³ with
//! PEFT's T5 defaults and parameter counts; gradients against central finite differences.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::common::{central_difference, relative_error};
use peft_studio_engine::model::load::read_safetensors;
use peft_studio_engine::model::t5::T5Model;
use peft_studio_engine::model::ForwardCtx;
use peft_studio_engine::peft::{MethodConfig, MethodKind, TargetModules};

fn fixture(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference/t5")
        .join(version)
}

/// The fixture's inputs and transformers' outputs.
struct Expected {
    input_ids: Tensor,
    mask: Tensor,
    labels: Vec<Vec<i64>>,
    decoder_input_ids: Vec<Vec<i64>>,
    logits: Tensor,
    loss: f32,
    encoder_output: Tensor,
}

fn expected(version: &str) -> Expected {
    let mut t = read_safetensors(&fixture(version).join("expected.safetensors")).expect("read");
    let mut take = |name: &str| t.remove(name).unwrap_or_else(|| panic!("{name}"));
    let ids = |x: Tensor| x.to_dtype(DType::U32).expect("u32");
    let rows = |x: Tensor| x.to_vec2::<i64>().expect("rows");
    Expected {
        input_ids: ids(take("input_ids")),
        mask: take("attention_mask").to_dtype(DType::F32).expect("f32"),
        labels: rows(take("labels")),
        decoder_input_ids: rows(take("decoder_input_ids")),
        logits: take("logits"),
        loss: take("loss").to_vec1::<f32>().expect("loss")[0],
        encoder_output: take("encoder_output"),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).expect("f32") - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flat")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

fn decoder_ids(model: &T5Model, e: &Expected) -> Tensor {
    let rows = model.shift_right(&e.labels);
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), model.device()).expect("ids")
}

#[test]
fn t5_logits_loss_and_encoder_output_equal_transformers() {
    for version in ["v1_0", "v1_1"] {
        let e = expected(version);
        let model = T5Model::load(&fixture(version), DType::F32, &Device::Cpu).expect("load");
        let shifted = model.shift_right(&e.labels);
        let want: Vec<Vec<u32>> = e
            .decoder_input_ids
            .iter()
            .map(|r| r.iter().map(|&x| x as u32).collect())
            .collect();
        assert_eq!(shifted, want, "{version}: decoder inputs");
        let ctx = ForwardCtx::eval();
        let (memory, memory_mask) = model.encode(&e.input_ids, &e.mask, &ctx).expect("encode");
        let enc = max_diff(&memory, &e.encoder_output);
        let logits = model
            .decode(&decoder_ids(&model, &e), &memory, &memory_mask, &ctx)
            .expect("decode");
        let diff = max_diff(&logits, &e.logits);
        let loss = T5Model::loss(&logits, &e.labels)
            .expect("loss")
            .to_scalar::<f32>()
            .expect("scalar");
        eprintln!(
            "{version}: encoder max |Δ| {enc:e}, logits max |Δ| {diff:e}, loss {loss} vs {}",
            e.loss
        );
        assert!(enc < 1e-4, "{version}: encoder output differs by {enc}");
        assert!(diff < 1e-4, "{version}: logits differ by {diff}");
        assert!(
            (loss - e.loss).abs() < 1e-4,
            "{version}: loss {loss} vs {}",
            e.loss
        );
    }
}

/// The fixture's labels as training's targets (u32) and weights (0 where `-100`), [b, t].
fn targets_and_weights(e: &Expected) -> (Tensor, Tensor) {
    let shape = (e.labels.len(), e.labels[0].len());
    let labels = e.labels.iter().flatten();
    let targets: Vec<u32> = labels.clone().map(|&l| l.max(0) as u32).collect();
    let weights: Vec<f32> = labels.map(|&l| if l < 0 { 0.0 } else { 1.0 }).collect();
    (
        Tensor::from_vec(targets, shape, &Device::Cpu).expect("targets"),
        Tensor::from_vec(weights, shape, &Device::Cpu).expect("weights"),
    )
}

/// Training's loss (the head and the cross-entropy in chunks, where the fused CPU loss
/// applies) equals transformers' loss, and with LoRA its gradients equal those of the whole
/// logits' loss.
#[test]
fn t5_training_loss_equals_transformers_and_the_whole_logits_loss() {
    let ctx = ForwardCtx::eval();
    for version in ["v1_0", "v1_1"] {
        let e = expected(version);
        let (targets, weights) = targets_and_weights(&e);
        let mut model = T5Model::load(&fixture(version), DType::F32, &Device::Cpu).expect("load");
        let dec = decoder_ids(&model, &e);
        let loss_of = |model: &T5Model| {
            model
                .batch_loss(&e.input_ids, &e.mask, &dec, &targets, &weights, &ctx)
                .expect("batch loss")
        };
        let (loss, counted) = loss_of(&model);
        let loss = loss.to_scalar::<f32>().expect("scalar");
        assert!(
            (loss - e.loss).abs() < 1e-4,
            "{version}: {loss} vs {}",
            e.loss
        );
        assert_eq!(
            counted,
            weights
                .sum_all()
                .and_then(|w| w.to_scalar::<f32>())
                .expect("n") as f64
        );
        let vars = method(MethodKind::Lora, 2, Some("all-linear"))
            .apply_t5(&mut model, 3, None)
            .expect("apply");
        for (_, var) in &vars {
            var.set(&(var.as_tensor() + 0.05).expect("move"))
                .expect("set");
        }
        let chunked = loss_of(&model).0;
        let logits = model
            .forward(&e.input_ids, &e.mask, &dec, &ctx)
            .expect("forward");
        let whole = T5Model::loss(&logits, &e.labels).expect("loss");
        let (value, reference) = (
            chunked.to_scalar::<f32>().expect("scalar"),
            whole.to_scalar::<f32>().expect("scalar"),
        );
        assert!(
            (value - reference).abs() < 1e-5,
            "{version}: {value} vs {reference}"
        );
        let (a, b) = (
            chunked.backward().expect("grads"),
            whole.backward().expect("grads"),
        );
        for (name, var) in &vars {
            let diff = max_diff(
                a.get(var.as_tensor()).expect("a"),
                b.get(var.as_tensor()).expect("b"),
            );
            assert!(diff < 1e-5, "{version} {name}: gradients differ by {diff}");
        }
    }
}

fn method(kind: MethodKind, r: usize, targets: Option<&str>) -> MethodConfig {
    MethodConfig {
        kind,
        r,
        target_modules: targets.map(TargetModules::parse_cli),
        ..Default::default()
    }
}

/// Trainable parameters equal PEFT's `get_nb_trainable_parameters` on the same checkpoints
/// (PEFT 0.21: LoRA r=8 with T5's default q, v; IA³ with its defaults k, v, wo and wo
/// feed-forward; LoRA r=4 all-linear, the head left out).
#[test]
fn t5_methods_train_peft_s_parameters() {
    let cases = [
        ("v1_0", method(MethodKind::Lora, 8, None), 6144),
        ("v1_0", method(MethodKind::Ia3, 8, None), 576),
        (
            "v1_0",
            method(MethodKind::Lora, 4, Some("all-linear")),
            8704,
        ),
        ("v1_1", method(MethodKind::Lora, 8, None), 8192),
        ("v1_1", method(MethodKind::Ia3, 8, None), 752),
        (
            "v1_1",
            method(MethodKind::Lora, 4, Some("all-linear")),
            12992,
        ),
    ];
    for (version, m, peft) in cases {
        let mut model = T5Model::load(&fixture(version), DType::F32, &Device::Cpu).expect("load");
        let vars = m.apply_t5(&mut model, 0, None).expect("apply");
        let count: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(count, peft, "{version} {:?} {:?}", m.kind, m.target_modules);
    }
    let mut model = T5Model::load(&fixture("v1_1"), DType::F32, &Device::Cpu).expect("load");
    let names: Vec<String> = method(MethodKind::Lora, 8, None)
        .apply_t5(&mut model, 0, None)
        .expect("apply")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"decoder.block.2.layer.1.EncDecAttention.v.lora_B.weight".to_string()));
    let refused = method(MethodKind::Houlsby, 8, None).apply_t5(&mut model, 0, None);
    assert!(refused.is_err_and(|e| e.to_string().contains("not available for T5")));
    // PEFT sizes a prefix by the encoder's depth: a deeper decoder is refused by name.
    let refused = virtual_tokens(MethodKind::PrefixTuning, 4).apply_t5(&mut model, 0, None);
    assert!(refused.is_err_and(|e| e.to_string().contains("as deep as the encoder")));
}

fn virtual_tokens(kind: MethodKind, tokens: usize) -> MethodConfig {
    MethodConfig {
        kind,
        num_virtual_tokens: tokens,
        ..Default::default()
    }
}

/// Prompt and prefix tuning train PEFT's tables (PEFT 0.21, SEQ_2_SEQ_LM): prompt tuning two
/// rows of d_model per virtual token, prefix tuning layers·2·d_model per virtual token.
#[test]
fn t5_prompt_and_prefix_tables_have_peft_s_shapes() {
    for (version, m, shape) in [
        (
            "v1_1",
            virtual_tokens(MethodKind::PromptTuning, 5),
            [10, 32],
        ),
        (
            "v1_0",
            virtual_tokens(MethodKind::PromptTuning, 5),
            [10, 32],
        ),
        (
            "v1_0",
            virtual_tokens(MethodKind::PrefixTuning, 4),
            [4, 128],
        ),
    ] {
        let mut model = T5Model::load(&fixture(version), DType::F32, &Device::Cpu).expect("load");
        let vars = m.apply_t5(&mut model, 0, None).expect("apply");
        let dims: Vec<Vec<usize>> = vars.iter().map(|(_, v)| v.dims().to_vec()).collect();
        assert_eq!(dims, vec![shape.to_vec()], "{version} {:?}", m.kind);
    }
}

/// A fixture in f64 with method `m` applied and every trained value moved off its start
/// (LoRA's B starts at zero, where A's gradient vanishes).
fn moved_off_start(
    version: &str,
    m: &MethodConfig,
) -> (T5Model, peft_studio_engine::peft::Trainables) {
    let mut model = T5Model::load(&fixture(version), DType::F64, &Device::Cpu).expect("load");
    let vars = m.apply_t5(&mut model, 3, None).expect("apply");
    for (i, (_, var)) in vars.iter().enumerate() {
        let n = var.elem_count();
        let noise: Vec<f64> = (0..n)
            .map(|j| ((i * 31 + j * 17) % 13) as f64 / 40.0 - 0.15)
            .collect();
        let moved = (var.as_tensor()
            + Tensor::from_vec(noise, var.shape(), var.device()).expect("noise"))
        .expect("add");
        var.set(&moved).expect("set");
    }
    (model, vars)
}

/// The fixture's loss for `model` in f64, and its gradients.
fn loss_and_grads<'e>(
    model: &T5Model,
    e: &'e Expected,
) -> (
    impl Fn(&T5Model) -> f64 + 'e,
    candle_core::backprop::GradStore,
) {
    let mask = e.mask.to_dtype(DType::F64).expect("mask");
    let dec = decoder_ids(model, e);
    let loss = move |model: &T5Model| -> Tensor {
        let logits = model
            .forward(&e.input_ids, &mask, &dec, &ForwardCtx::eval())
            .expect("forward");
        T5Model::loss(&logits, &e.labels).expect("loss")
    };
    let grads = loss(model).backward().expect("backward");
    (
        move |m: &T5Model| loss(m).to_scalar::<f64>().expect("loss"),
        grads,
    )
}

/// Checks entries `at` of `var`'s gradient against central differences of `loss`; returns
/// the worst relative error.
fn check_entries(
    label: &str,
    model: &T5Model,
    var: &candle_core::Var,
    grads: &candle_core::backprop::GradStore,
    loss: &impl Fn(&T5Model) -> f64,
    at: &[usize],
) -> f64 {
    let g: Vec<f64> = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("no gradient for {label}"))
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    let mut worst = 0.0f64;
    for &i in at {
        let numeric = central_difference(var, i, 1e-5, || loss(model));
        let rel = relative_error(numeric, g[i]);
        worst = worst.max(rel);
        assert!(
            rel < 1e-5,
            "{label}[{i}]: analytic {} vs numeric {numeric}",
            g[i]
        );
        assert!(
            g[i] != 0.0,
            "{label}[{i}]: a gradient of exactly zero checks nothing"
        );
    }
    worst
}

/// LoRA (with B made non-zero), DoRA's magnitudes (with rsLoRA), and IA³ gradients through
/// both stacks, cross-attention and the relative-position bias, in f64, against central
/// differences.
#[test]
fn t5_gradients_match_central_finite_differences() {
    for (version, m) in [
        ("v1_0", method(MethodKind::Lora, 2, Some("all-linear"))),
        ("v1_1", method(MethodKind::Lora, 2, Some("all-linear"))),
        ("v1_1", method(MethodKind::Ia3, 2, None)),
        (
            "v1_1",
            MethodConfig {
                use_dora: true,
                use_rslora: true,
                ..method(MethodKind::Lora, 2, Some("q,k,v,o,wo"))
            },
        ),
    ] {
        let e = expected(version);
        let (model, vars) = moved_off_start(version, &m);
        let (loss, grads) = loss_and_grads(&model, &e);
        let (mut checked, mut worst) = (0, 0.0f64);
        // DoRA's A and B are not held to differences: PEFT treats the row norm as a constant
        // in the backward pass (the DoRA paper's §4.3), and so does the studio.
        let checked_vars = vars
            .iter()
            .filter(|(n, _)| !m.use_dora || n.ends_with("lora_magnitude_vector"));
        for (name, var) in checked_vars.step_by(5) {
            let n = var.elem_count();
            let label = format!("{version} {name}");
            worst = worst.max(check_entries(
                &label,
                &model,
                var,
                &grads,
                &loss,
                &[0, n / 2, n - 1],
            ));
            checked += 3;
        }
        eprintln!(
            "{version} {:?}: {checked} entries, worst relative error {worst:e}",
            m.kind
        );
        assert!(checked >= 9);
    }
}

/// Prompt tuning's virtual tokens (through the encoder and the cross-attention) and prefix
/// tuning's keys and values (in the decoder's self-attention, its queries placed after them),
/// in f64, against central differences; the parts PEFT's layout never reads (a prompt
/// table's second half, a two-layer prefix's layer-1 rows) get no gradient.
#[test]
fn t5_prompt_and_prefix_gradients_match_central_finite_differences() {
    let d = 32;
    for (version, m) in [
        ("v1_1", virtual_tokens(MethodKind::PromptTuning, 3)),
        ("v1_0", virtual_tokens(MethodKind::PromptTuning, 3)),
        ("v1_0", virtual_tokens(MethodKind::PrefixTuning, 3)),
    ] {
        let e = expected(version);
        let (model, vars) = moved_off_start(version, &m);
        let (loss, grads) = loss_and_grads(&model, &e);
        let (_, var) = &vars[0];
        // Read entries: prompt rows 0..3; the prefix's layer-0 keys and values (the first
        // 2·d columns of each of its rows [2·layers·d]).
        let (read, unread): (Vec<usize>, Vec<usize>) = match m.kind {
            MethodKind::PromptTuning => ((0..3 * d).step_by(7).collect(), vec![3 * d, 6 * d - 1]),
            _ => (
                (0..3)
                    .flat_map(|t| (0..2 * d).step_by(9).map(move |c| t * 4 * d + c))
                    .collect(),
                vec![2 * d, 4 * d - 1, 4 * d + 3 * d],
            ),
        };
        let label = format!("{version} {:?}", m.kind);
        let worst = check_entries(&label, &model, var, &grads, &loss, &read);
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .expect("grad")
            .flatten_all()
            .expect("flat")
            .to_vec1()
            .expect("vec");
        for i in unread {
            assert_eq!(g[i], 0.0, "{label}[{i}] is never read");
        }
        eprintln!(
            "{label}: {} entries, worst relative error {worst:e}",
            read.len()
        );
    }
}

/// Freeze (the last block of each stack and the head) and full fine-tuning: the weights they
/// train, their counts, and their gradients (through the embeddings, norms, the relative
/// bias tables and every projection) against central differences in f64.
#[test]
fn t5_freeze_and_full_gradients_match_central_finite_differences() {
    use peft_studio_engine::plan::count_params_t5;
    let freeze = MethodConfig {
        kind: MethodKind::Freeze,
        trainable_modules: vec!["lm_head".into()],
        trainable_last_layers: 1,
        ..Default::default()
    };
    let full = MethodConfig {
        kind: MethodKind::Full,
        ..Default::default()
    };
    for (version, m) in [("v1_1", &freeze), ("v1_0", &full), ("v1_1", &full)] {
        let e = expected(version);
        let (model, vars) = moved_off_start(version, m);
        let cfg = model.config().clone();
        let counted = count_params_t5(&cfg, m).expect("count");
        let trained: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(trained as u64, counted.trainable, "{version} {:?}", m.kind);
        assert_eq!(counted.total, cfg.parameters());
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        if m.kind == MethodKind::Freeze {
            // v1.1's own head, the encoder's block 1 and the decoder's block 2 (the last of each).
            assert!(names.contains(&"lm_head.weight"), "{names:?}");
            assert!(
                names.iter().all(|n| n.starts_with("lm_head")
                    || n.starts_with("encoder.block.1.")
                    || n.starts_with("decoder.block.2.")),
                "{names:?}"
            );
        } else {
            assert_eq!(trained as u64, cfg.parameters());
        }
        let (loss, grads) = loss_and_grads(&model, &e);
        let mut worst = 0.0f64;
        for (name, var) in vars.iter().step_by(4) {
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .expect("flat")
                .to_vec1()
                .expect("vec");
            // Rows of tokens or buckets the fixture never reads have no gradient to check.
            let read: Vec<usize> = (0..g.len()).filter(|&i| g[i] != 0.0).collect();
            let at = [read[0], read[read.len() / 2], read[read.len() - 1]];
            let label = format!("{version} {:?} {name}", m.kind);
            worst = worst.max(check_entries(&label, &model, var, &grads, &loss, &at));
        }
        eprintln!("{version} {:?}: worst relative error {worst:e}", m.kind);
    }
}

/// Greedy generation equals transformers' `generate` on both checkpoints and both sources
/// (the second without its padding): the encoder once, the decoder's keys and values cached.
#[test]
fn t5_greedy_generation_equals_transformers() {
    use peft_studio_engine::generate::{generate_seq2seq, GenerateOptions};
    for version in ["v1_0", "v1_1"] {
        let e = expected(version);
        let want = read_safetensors(&fixture(version).join("generate.safetensors"))
            .expect("read")
            .remove("generated")
            .expect("generated")
            .to_vec2::<i64>()
            .expect("rows");
        let model = T5Model::load(&fixture(version), DType::F32, &Device::Cpu).expect("load");
        let sources = e.input_ids.to_vec2::<u32>().expect("sources");
        let masks = e.mask.to_vec2::<f32>().expect("masks");
        for (row, (source, mask)) in sources.iter().zip(&masks).enumerate() {
            let source: Vec<u32> = source
                .iter()
                .zip(mask)
                .filter(|(_, m)| **m > 0.0)
                .map(|(s, _)| *s)
                .collect();
            let opts = GenerateOptions {
                max_new_tokens: want[row].len() - 1,
                ..Default::default()
            };
            let got = generate_seq2seq(&model, &source, &opts, |_| true).expect("generate");
            // transformers' rows start with the decoder's start token.
            let want: Vec<u32> = want[row][1..].iter().map(|&t| t as u32).collect();
            assert_eq!(got, want, "{version} row {row}");
        }
    }
}

/// The projections and parameters a T5 config implies are the checkpoint's, name for name.
#[test]
fn t5_config_names_every_projection_and_parameter() {
    use peft_studio_engine::model::t5::T5Config;
    for version in ["v1_0", "v1_1"] {
        let cfg = T5Config::from_path(&fixture(version)).expect("config");
        let model = T5Model::load(&fixture(version), DType::F32, &Device::Cpu).expect("load");
        let loaded: Vec<(String, usize, usize)> = model
            .linears()
            .iter()
            .map(|l| (l.name.clone(), l.in_features(), l.out_features()))
            .collect();
        assert_eq!(cfg.projections(), loaded, "{version}");
        let stored: u64 = read_safetensors(&fixture(version).join("model.safetensors"))
            .expect("weights")
            .values()
            .map(|t| t.elem_count() as u64)
            .sum();
        assert_eq!(cfg.parameters(), stored, "{version}");
    }
}

/// `plan`'s line equals PEFT's `print_trainable_parameters` (PEFT 0.21, transformers 5.25,
/// the models built from these configs on the meta device, Flan-T5's head untied as a loaded
/// checkpoint keeps it) for Flan-T5-base and T5-large: LoRA, IA³, prefix and prompt tuning.
#[test]
fn t5_plan_lines_equal_peft_s() {
    use peft_studio_engine::model::t5::T5Config;
    use peft_studio_engine::plan::count_params_t5;
    let flan_base = r#"{"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
        "num_decoder_layers": 12, "num_heads": 12, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false}"#;
    let t5_large = r#"{"vocab_size": 32128, "d_model": 1024, "d_kv": 64, "d_ff": 4096, "num_layers": 24,
        "num_heads": 16, "feed_forward_proj": "relu"}"#;
    let cases = [
        (
            flan_base,
            MethodKind::Lora,
            "trainable params: 884,736 || all params: 248,462,592 || trainable%: 0.3561",
        ),
        (
            flan_base,
            MethodKind::Ia3,
            "trainable params: 104,448 || all params: 247,682,304 || trainable%: 0.0422",
        ),
        (
            t5_large,
            MethodKind::Lora,
            "trainable params: 2,359,296 || all params: 740,027,392 || trainable%: 0.3188",
        ),
        (
            t5_large,
            MethodKind::Ia3,
            "trainable params: 344,064 || all params: 738,012,160 || trainable%: 0.0466",
        ),
        (
            flan_base,
            MethodKind::PrefixTuning,
            "trainable params: 368,640 || all params: 247,946,496 || trainable%: 0.1487",
        ),
        (
            flan_base,
            MethodKind::PromptTuning,
            "trainable params: 30,720 || all params: 247,608,576 || trainable%: 0.0124",
        ),
        (
            t5_large,
            MethodKind::PrefixTuning,
            "trainable params: 983,040 || all params: 738,651,136 || trainable%: 0.1331",
        ),
        (
            t5_large,
            MethodKind::PromptTuning,
            "trainable params: 40,960 || all params: 737,709,056 || trainable%: 0.0056",
        ),
    ];
    for (json, kind, peft) in cases {
        let cfg = T5Config::from_json(json).expect("config");
        // LoRA r=8 on T5's defaults, IA³'s defaults, 20 virtual tokens.
        let m = MethodConfig {
            num_virtual_tokens: 20,
            ..method(kind, 8, None)
        };
        let line = count_params_t5(&cfg, &m).expect("count").to_string();
        assert_eq!(line, peft, "{kind:?}");
    }
}
