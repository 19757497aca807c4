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
        let memory = model.encode(&e.input_ids, &e.mask, &ctx).expect("encode");
        let enc = max_diff(&memory, &e.encoder_output);
        let logits = model
            .decode(&decoder_ids(&model, &e), &memory, &e.mask, &ctx)
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
        let vars = m.apply_t5(&mut model, 0).expect("apply");
        let count: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(count, peft, "{version} {:?} {:?}", m.kind, m.target_modules);
    }
    let mut model = T5Model::load(&fixture("v1_1"), DType::F32, &Device::Cpu).expect("load");
    let names: Vec<String> = method(MethodKind::Lora, 8, None)
        .apply_t5(&mut model, 0)
        .expect("apply")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"decoder.block.2.layer.1.EncDecAttention.v.lora_B.weight".to_string()));
    let refused = method(MethodKind::PrefixTuning, 8, None).apply_t5(&mut model, 0);
    assert!(refused.is_err_and(|e| e.to_string().contains("not available for T5")));
}

/// LoRA (with B made non-zero) and IA³ gradients through both stacks, cross-attention and the
/// relative-position bias, in f64, against central differences.
#[test]
fn t5_gradients_match_central_finite_differences() {
    for (version, m) in [
        ("v1_0", method(MethodKind::Lora, 2, Some("all-linear"))),
        ("v1_1", method(MethodKind::Lora, 2, Some("all-linear"))),
        ("v1_1", method(MethodKind::Ia3, 2, None)),
    ] {
        let e = expected(version);
        let mut model = T5Model::load(&fixture(version), DType::F64, &Device::Cpu).expect("load");
        let vars = m.apply_t5(&mut model, 3).expect("apply");
        // LoRA's B starts at zero, where A's gradient vanishes: move every value off its start.
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
        let input = e.input_ids.clone();
        let mask = e.mask.to_dtype(DType::F64).expect("mask");
        let dec = decoder_ids(&model, &e);
        let loss_of = |model: &T5Model| -> Tensor {
            let logits = model
                .forward(&input, &mask, &dec, &ForwardCtx::eval())
                .expect("forward");
            T5Model::loss(&logits, &e.labels).expect("loss")
        };
        let grads = loss_of(&model).backward().expect("backward");
        let (eps, mut checked, mut worst) = (1e-5, 0, 0.0f64);
        for (name, var) in vars.iter().step_by(5) {
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .expect("flat")
                .to_vec1()
                .expect("vec");
            for &i in &[0, var.elem_count() / 2, var.elem_count() - 1] {
                let numeric = central_difference(var, i, eps, || {
                    loss_of(&model).to_scalar::<f64>().expect("loss")
                });
                let rel = relative_error(numeric, g[i]);
                worst = worst.max(rel);
                assert!(
                    rel < 1e-5,
                    "{version} {name}[{i}]: analytic {} vs numeric {numeric}",
                    g[i]
                );
                checked += 1;
            }
        }
        eprintln!(
            "{version} {:?}: {checked} entries, worst relative error {worst:e}",
            m.kind
        );
        assert!(checked >= 9);
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
/// the models built from these configs on the meta device) for Flan-T5-base and T5-large.
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
    ];
    for (json, kind, peft) in cases {
        let cfg = T5Config::from_json(json).expect("config");
        let line = count_params_t5(&cfg, &method(kind, 8, None))
            .expect("count")
            .to_string();
        assert_eq!(line, peft, "{kind:?}");
    }
}
