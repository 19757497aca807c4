//! Generation: the KV cache gives the same tokens as full recomputation; EOS stops it.

use candle_core::{DType, Device, Tensor};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::generate::{generate, GenerateOptions};
use peft_studio_engine::model::{load_model, ForwardCtx};
use peft_studio_engine::tokenizer::TextTokenizer;

use crate::common::tiny_model;

#[test]
fn cached_greedy_decoding_equals_recomputation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let prompt = vec![10u32, 20, 30, 40];
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let cached = generate(&model, &prompt, &[], &opts, |_| {}).expect("generate");
    let mut ids = prompt.clone();
    for _ in 0..12 {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .expect("ids")
            .unsqueeze(0)
            .expect("b");
        let logits = model
            .forward(&input, None, &ForwardCtx::eval())
            .expect("forward");
        let last: Vec<f32> = logits
            .squeeze(0)
            .expect("s")
            .get(ids.len() - 1)
            .expect("last")
            .to_vec1()
            .expect("v");
        let next = last
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0 as u32;
        ids.push(next);
    }
    assert_eq!(cached, ids[prompt.len()..].to_vec());
}

#[test]
fn sampling_is_seeded_and_eos_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let tok = TextTokenizer::load(&path, &model.config().eos_token_ids).expect("tokenizer");
    assert_eq!(tok.eos_ids(), &[256]);
    let prompt = tok.encode("hello", false).expect("encode");
    assert_eq!(prompt.len(), 5, "byte-level: one token per byte");
    let opts = GenerateOptions {
        max_new_tokens: 20,
        temperature: 0.8,
        top_p: 0.9,
        seed: 3,
    };
    let a = generate(&model, &prompt, tok.eos_ids(), &opts, |_| {}).expect("a");
    let b = generate(&model, &prompt, tok.eos_ids(), &opts, |_| {}).expect("b");
    assert_eq!(a, b, "same seed, same tokens");
    // With every token an EOS, generation stops at once.
    let all: Vec<u32> = (0..260).collect();
    assert!(generate(&model, &prompt, &all, &opts, |_| {})
        .expect("c")
        .is_empty());
}

/// A Stop button: generation ends at the token where the callback says so.
#[test]
fn generation_stops_when_asked() {
    use peft_studio_engine::generate::generate_until;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let opts = GenerateOptions {
        max_new_tokens: 20,
        ..Default::default()
    };
    let mut seen = 0;
    let out = generate_until(&model, &[1, 2, 3], &[], &opts, |_| {
        seen += 1;
        seen < 3
    })
    .expect("generate");
    assert_eq!(out.len(), 3);
}

/// The playground switches adapters on one loaded base: detaching every kind of adapter
/// gives the base model's logits back exactly.
#[test]
fn detaching_adapters_restores_the_base_model() {
    use peft_studio_engine::peft::load::detach_adapters;
    use peft_studio_engine::peft::{MethodConfig, MethodKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let input = Tensor::new(&[[5u32, 9, 14, 3]], &Device::Cpu).expect("ids");
    let logits = |m: &peft_studio_engine::model::LlamaModel| {
        m.forward(&input, None, &ForwardCtx::eval())
            .expect("forward")
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec")
    };
    let base = logits(&model);
    for kind in [
        MethodKind::Lora,
        MethodKind::Ia3,
        MethodKind::PromptTuning,
        MethodKind::PrefixTuning,
        MethodKind::Houlsby,
    ] {
        let method = MethodConfig {
            kind,
            num_virtual_tokens: 2,
            ..MethodConfig::default()
        };
        let vars = method.apply(&mut model, 1).expect("apply");
        // Move every variable off its initial value so that each method changes the output.
        for (_, v) in &vars {
            let moved = (v.as_tensor() + 0.5).expect("add");
            v.set(&moved).expect("set");
        }
        assert_ne!(logits(&model), base, "{kind} changes the logits");
        detach_adapters(&mut model);
        assert_eq!(logits(&model), base, "{kind} detached");
    }
}

/// With a LoRA adapter's variables attached, decoding builds a graph each step; the cache
/// must not keep it, or every earlier cache stays alive (O(T²) memory in the length).
#[test]
fn the_kv_cache_holds_no_graph_with_an_adapter_attached() {
    use peft_studio_engine::model::KvCache;
    let dir = tempfile::tempdir().expect("tempdir");
    let method = crate::common::lora_method(4, "q_proj,k_proj,v_proj");
    let (model, _vars) = crate::common::gradient_model(dir.path(), &method, DType::F32);
    let mut cache = KvCache::default();
    let mut input = Tensor::new(&[1u32, 2, 3], &Device::Cpu)
        .expect("ids")
        .unsqueeze(0)
        .expect("b");
    for step in 0..4u32 {
        let logits = model.last_logits(&input, &mut cache).expect("logits");
        assert!(
            logits.track_op(),
            "the adapter's variables are in this step's graph"
        );
        assert!(
            !cache.tracks_ops(),
            "step {step}: a cached tensor carries an op"
        );
        input = Tensor::new(&[step + 4], &Device::Cpu)
            .expect("id")
            .unsqueeze(0)
            .expect("b");
    }
    assert_eq!(cache.len(), 6);
}
