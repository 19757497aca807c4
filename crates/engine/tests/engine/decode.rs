//! The batched decoder (`model::fused::decode`): its logits equal the model's own for every
//! family with a LoRA adapter, and a sequence decodes the same tokens alone or batched with
//! others (other adapters, other lengths, joining mid-way).

use candle_core::{DType, Device, Tensor};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::model::fused::decode::{unsupported, Decoder, RowAdapter, Sequence};
use peft_studio_engine::model::{ForwardCtx, LlamaModel};
use peft_studio_engine::ops::SplitMix64;
use peft_studio_engine::peft::{MethodConfig, MethodKind};

use crate::common::{family_specs, for_family, lora_method, tiny_model};

/// Attaches `method` to `model` with B moved off zero (seeded), so the adapter matters.
fn adapted(model: &LlamaModel, method: &MethodConfig, seed: u64) -> LlamaModel {
    let mut m = model.clone();
    let vars = method.apply(&mut m, seed).expect("apply");
    let mut rng = SplitMix64::new(seed);
    for (name, var) in &vars {
        if name.ends_with("lora_B.weight") {
            let data: Vec<f32> = (0..var.elem_count())
                .map(|_| (rng.next_f64() * 0.4 - 0.2) as f32)
                .collect();
            let t = Tensor::from_vec(data, var.shape().clone(), &Device::Cpu).expect("b");
            var.set(&t).expect("set");
        }
    }
    m
}

/// The model's own last-position logits for `ids`.
fn reference(model: &LlamaModel, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu)
        .expect("ids")
        .unsqueeze(0)
        .expect("b");
    let logits = model
        .forward(&input, None, &ForwardCtx::eval())
        .expect("forward");
    logits
        .squeeze(0)
        .expect("s")
        .get(ids.len() - 1)
        .expect("last")
        .to_dtype(DType::F32)
        .expect("f32")
        .to_vec1()
        .expect("vec")
}

/// Whether the CPU's kernels run (the decoder is theirs; under `PEFT_STUDIO_FUSED=off` or
/// `generic` generation takes the model's own path and these tests have nothing to check).
fn cpu_kernels() -> bool {
    use peft_studio_engine::model::fused::{kernels, Kernels};
    let on = kernels() == Kernels::Cpu;
    if !on {
        eprintln!("skipped: the batched decoder runs on the CPU's kernels only");
    }
    on
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}

#[test]
fn decoder_logits_equal_the_models_for_every_family() {
    if !cpu_kernels() {
        return;
    }
    let mut specs = vec![
        TinySpec::default(),
        TinySpec {
            qkv_bias: true,
            tie_word_embeddings: true,
            ..Default::default()
        },
    ];
    specs.extend(family_specs());
    let method = lora_method(4, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    for spec in specs {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = tiny_model(dir.path(), &spec);
        let base =
            peft_studio_engine::model::load_model(&path, DType::F32, &Device::Cpu).expect("load");
        let model = adapted(&base, &for_family(&method, &spec), 3);
        let decoder = Decoder::new(&model).expect("decoder");
        let adapter = RowAdapter::of(&model).expect("adapter");
        assert!(
            adapter.is_some(),
            "{}: the LoRA is taken",
            spec.architecture
        );
        let mut seq = decoder.sequence(12, adapter).expect("sequence");
        // Past the fixtures' 4-position window: the sliding layers drop early keys.
        let mut ids = vec![5u32, 9, 14, 3, 7, 2];
        let mut input = ids.clone();
        for step in 0..6 {
            let got = decoder.step(&mut [(&mut seq, &input)]).expect("step");
            let want = reference(&model, &ids);
            let diff = max_diff(&got[0], &want);
            assert!(
                diff < 1e-4,
                "{} step {step}: logits differ by {diff}",
                spec.architecture
            );
            let next = argmax(&want);
            ids.push(next);
            input = vec![next];
        }
        assert_eq!(seq.len(), 11);
    }
}

/// Greedy tokens of `seq` fed `prompt`, `steps` of them, alone.
fn alone(decoder: &Decoder, mut seq: Sequence, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let logits = decoder.step(&mut [(&mut seq, &input)]).expect("step");
        let next = argmax(&logits[0]);
        out.push(next);
        input = vec![next];
    }
    out
}

#[test]
fn a_sequence_decodes_the_same_alone_and_batched() {
    if !cpu_kernels() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = TinySpec {
        hidden_size: 64,
        intermediate_size: 128,
        ..Default::default()
    };
    let path = tiny_model(dir.path(), &spec);
    let base =
        peft_studio_engine::model::load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let one = adapted(&base, &lora_method(4, "q_proj,v_proj"), 5);
    let two = adapted(&base, &lora_method(8, "o_proj,down_proj,gate_proj"), 9);
    let (one, two) = (
        RowAdapter::of(&one).expect("one"),
        RowAdapter::of(&two).expect("two"),
    );
    // Six rows: a group of four sharing each weight read, and two on their own.
    let adapters = [one.clone(), two.clone(), None, one, None, two];
    let decoder = Decoder::new(&base).expect("decoder");
    let prompts: [&[u32]; 6] = [
        &[1, 2, 3, 4, 5, 6, 7],
        &[40, 41],
        &[200, 100, 50, 25, 12],
        &[9],
        &[1, 2, 3, 4, 5, 6, 7],
        &[77, 78, 79],
    ];
    let steps = 10;
    let seqs = || -> Vec<Sequence> {
        adapters
            .iter()
            .map(|a| decoder.sequence(20, a.clone()).expect("sequence"))
            .collect()
    };
    let expected: Vec<Vec<u32>> = seqs()
        .into_iter()
        .zip(prompts)
        .map(|(s, p)| alone(&decoder, s, p, steps))
        .collect();
    assert_ne!(expected[0], expected[2], "the adapter changes the tokens");
    // Together: the third joins two steps late (continuous batching).
    let mut seqs = seqs();
    let mut inputs: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); 6];
    for step in 0..steps + 2 {
        let live: Vec<usize> = (0..6)
            .filter(|&i| got[i].len() < steps && (i < 2 || step >= 2))
            .collect();
        let mut batch: Vec<(&mut Sequence, &[u32])> = seqs
            .iter_mut()
            .zip(&inputs)
            .enumerate()
            .filter(|(i, _)| live.contains(i))
            .map(|(_, (s, t))| (s, t.as_slice()))
            .collect();
        let logits = decoder.step(&mut batch).expect("step");
        for (&i, l) in live.iter().zip(&logits) {
            let next = argmax(l);
            got[i].push(next);
            inputs[i] = vec![next];
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn what_a_row_cannot_hold_is_named() {
    if !cpu_kernels() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let base =
        peft_studio_engine::model::load_model(&path, DType::F32, &Device::Cpu).expect("load");
    assert_eq!(unsupported(&base), None);
    for (kind, word) in [
        (MethodKind::PrefixTuning, "prefix"),
        (MethodKind::PromptTuning, "prompt"),
        (MethodKind::Ia3, "IA³"),
    ] {
        let mut m = base.clone();
        let method = MethodConfig {
            kind,
            num_virtual_tokens: 2,
            ..MethodConfig::default()
        };
        method.apply(&mut m, 1).expect("apply");
        let why = unsupported(&m).expect("refused");
        assert!(why.contains(word), "{kind}: {why}");
        let err = RowAdapter::of(&m).expect_err("refused").to_string();
        assert!(err.contains(word), "{err}");
    }
    let decoder = Decoder::new(&base).expect("decoder");
    let err = decoder
        .sequence(1_000_000, None)
        .err()
        .expect("too long")
        .to_string();
    assert!(err.contains("context"), "{err}");
    let mut seq = decoder.sequence(3, None).expect("sequence");
    let err = decoder
        .step(&mut [(&mut seq, &[1, 2, 3, 4])])
        .expect_err("too many")
        .to_string();
    assert!(err.contains("room"), "{err}");
}

/// An f32 model holds a bf16 checkpoint's projections as stored (the playground and serve
/// load it so); decoding reads their rows in place and gives the widened copy's logits.
#[test]
fn an_f32_model_of_a_bf16_checkpoint_decodes_as_its_widened_copy() {
    use peft_studio_engine::model::load::load_model_held;
    if !cpu_kernels() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = crate::common::stored_as(dir.path(), &TinySpec::default(), DType::BF16);
    let held = load_model_held(&path, DType::F32, &Device::Cpu, None, true).expect("load");
    assert!(held.base_quantization().is_some(), "held as stored");
    let mut widened = held.clone();
    widened.dequantize_base().expect("widen");
    let decoder = Decoder::new(&held).expect("decoder");
    let mut seq = decoder.sequence(12, None).expect("sequence");
    let mut ids = vec![5u32, 9, 14, 3];
    let mut input = ids.clone();
    for step in 0..5 {
        let got = decoder.step(&mut [(&mut seq, &input)]).expect("step");
        let want = reference(&widened, &ids);
        let diff = max_diff(&got[0], &want);
        assert!(diff < 1e-4, "step {step}: logits differ by {diff}");
        let next = argmax(&want);
        ids.push(next);
        input = vec![next];
    }
}
