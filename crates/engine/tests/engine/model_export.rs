//! Whole models written out — merged Hugging Face folders (sharded as transformers shards),
//! GGUF files (the base, or merged) — and GGUF LoRAs read back: each is loaded again through
//! the studio's own readers and must compute what it was written from.

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::gguf::lora_read::read_gguf_lora;
use peft_studio_engine::gguf::model::{write_gguf_model, GgufType};
use peft_studio_engine::library::import::import_gguf;
use peft_studio_engine::model::gguf::tensors::permute;
use peft_studio_engine::model::gguf::GgufWeights;
use peft_studio_engine::model::quantized::Quantization;
use peft_studio_engine::model::{load_model, ForwardCtx, LlamaModel};
use peft_studio_engine::tokenizer::TextTokenizer;

use crate::common::{lora_method, max_abs_diff, tiny_model};

const IDS: [u32; 8] = [1, 5, 9, 33, 60, 2, 17, 40];

fn logits(model: &LlamaModel) -> Tensor {
    let input = Tensor::new(&IDS[..], &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    model
        .forward(&input, None, &ForwardCtx::eval())
        .expect("forward")
}

/// A merged folder past the shard size is split as transformers splits it (numbered shards and
/// `model.safetensors.index.json` naming every weight's file) and loads back to the same
/// logits as the one-file folder.
#[test]
fn merged_folders_shard_like_transformers_and_load_back() {
    use peft_studio_engine::export::merged::write_merged_model;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut logits_of = Vec::new();
    for (name, max_shard) in [("one", usize::MAX), ("sharded", 40_000)] {
        let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
        lora_method(4, "all-linear")
            .apply(&mut model, 5)
            .expect("apply");
        let out = dir.path().join(name);
        write_merged_model(&model, &path, &out, max_shard).expect("merge");
        let back = load_model(&out, DType::F32, &Device::Cpu).expect("load merged");
        logits_of.push(logits(&back));
        let index = out.join("model.safetensors.index.json");
        if name == "one" {
            assert!(out.join("model.safetensors").is_file() && !index.exists());
            continue;
        }
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(index).expect("index")).expect("json");
        let files: std::collections::BTreeSet<&str> = index["weight_map"]
            .as_object()
            .expect("map")
            .values()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(files.len() > 2, "{files:?}");
        let last = format!("model-{:05}-of-{:05}.safetensors", files.len(), files.len());
        assert!(files.contains(last.as_str()), "{files:?}");
        for f in &files {
            let size = std::fs::metadata(out.join(f)).expect("shard").len();
            assert!(size < 40_000 + 4 * 32 * 260, "{f}: {size} bytes");
        }
    }
    assert_eq!(max_abs_diff(&logits_of[0], &logits_of[1]), 0.0);
}

/// The model in `path` written to the F32 GGUF `file` and imported back (converted) into a
/// library under `dir`: the model, the library entry, the model loaded back.
fn f32_gguf_round_trip(
    path: &std::path::Path,
    file: &std::path::Path,
    dir: &std::path::Path,
) -> (
    LlamaModel,
    peft_studio_engine::library::ModelEntry,
    LlamaModel,
) {
    let mut model = load_model(path, DType::F32, &Device::Cpu).expect("load");
    write_gguf_model(&mut model, path, "tiny", GgufType::F32, file).expect("write");
    let entry = import_gguf(
        file,
        &dir.join("home"),
        "back",
        GgufWeights::Converted,
        &mut |_, _| {},
    )
    .expect("import");
    let back = load_model(&entry.path, DType::F32, &Device::Cpu).expect("load back");
    (model, entry, back)
}

/// Llama (q/k rows permuted, GQA), Qwen2 (biases, no permutation), Qwen3, Gemma 3 and Gemma 2
/// (their norms with llama.cpp's +1, their own tensor names and metadata) and Phi-3 (fused
/// projections, partial rotary, LongRoPE's factors as tensors) in F32: importing the file
/// gives the same logits (Gemma's norms round through w + 1 − 1) and the same token ids.
#[test]
fn f32_gguf_models_import_back_to_the_same_model() {
    let families = crate::common::family_specs()
        .into_iter()
        // llama.cpp writes Mistral as `llama` (no window).
        .filter(|s| s.architecture != "MistralForCausalLM");
    for spec in [
        TinySpec::default(),
        TinySpec {
            qkv_bias: true,
            tie_word_embeddings: true,
            ..TinySpec::default()
        },
    ]
    .into_iter()
    .chain(families)
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = tiny_model(dir.path(), &spec);
        let file = dir.path().join("model.gguf");
        if spec.architecture.starts_with("Gemma") {
            // The tiny Gemmas bend what llama.cpp assumes (their score factor, Gemma 3's
            // layer pattern): refused, then made to its assumptions.
            let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
            let err = write_gguf_model(&mut model, &path, "tiny", GgufType::F32, &file)
                .expect_err("refused")
                .to_string();
            assert!(err.contains("llama.cpp's gemma"), "{err}");
            let cfg_path = path.join("config.json");
            let mut cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read"))
                    .expect("json");
            cfg["query_pre_attn_scalar"] = cfg["head_dim"].clone();
            if let Some(c) = cfg.as_object_mut() {
                c.remove("layer_types");
            }
            std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
        }
        let (model, entry, back) = f32_gguf_round_trip(&path, &file, dir.path());
        assert_eq!(back.config().model_type, model.config().model_type);
        let (a, b) = (back.config(), model.config());
        assert_eq!(
            (
                a.sliding_window,
                &a.layer_kinds,
                a.attn_softcap,
                a.final_softcap
            ),
            (
                b.sliding_window,
                &b.layer_kinds,
                b.attn_softcap,
                b.final_softcap
            ),
            "{}",
            spec.architecture
        );
        let diff = max_abs_diff(&logits(&model), &logits(&back));
        assert!(
            diff < 1e-5,
            "{}: logits differ by {diff}",
            spec.architecture
        );
        let text = "the cat sat on the mat, 2+2=4 <|endoftext|>";
        let ids = |p: &std::path::Path| {
            TextTokenizer::load(p, &[])
                .expect("tokenizer")
                .encode(text, true)
                .expect("encode")
        };
        assert_eq!(ids(&path), ids(&entry.path));
    }
}

/// Rope scaling as llama.cpp stores it (`rope.scaling.type`, `.factor`,
/// `.original_context_length`): YaRN on Qwen3 and linear on Llama survive a GGUF round trip
/// (same config, same logits); YaRN settings llama.cpp does not read are refused.
#[test]
fn rope_scaling_survives_a_gguf_round_trip() {
    let yarn = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 16});
    let linear = serde_json::json!({"rope_type": "linear", "factor": 2.0});
    for (architecture, scaling) in [("Qwen3ForCausalLM", yarn), ("LlamaForCausalLM", linear)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = TinySpec {
            architecture,
            ..TinySpec::default()
        };
        let path = tiny_model(dir.path(), &spec);
        let cfg_path = path.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read")).expect("json");
        cfg["rope_scaling"] = scaling;
        std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
        let file = dir.path().join("model.gguf");
        let (model, _, back) = f32_gguf_round_trip(&path, &file, dir.path());
        let (a, b) = (back.config(), model.config());
        assert_eq!(
            (&a.yarn, a.rope_linear_factor),
            (&b.yarn, b.rope_linear_factor),
            "{architecture}"
        );
        assert!(b.yarn.is_some() || b.rope_linear_factor == 2.0);
        let diff = max_abs_diff(&logits(&model), &logits(&back));
        assert!(diff < 1e-5, "{architecture}: logits differ by {diff}");
        if b.yarn.is_some() {
            let mut cfg = cfg.clone();
            cfg["rope_scaling"]["beta_fast"] = serde_json::json!(16.0);
            std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
            let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
            let err = write_gguf_model(&mut model, &path, "tiny", GgufType::F32, &file)
                .expect_err("refused")
                .to_string();
            assert!(err.contains("llama.cpp's yarn"), "{err}");
        }
    }
}

/// F16 and Q8_0 files: every matrix within its format's rounding of the original (Q8_0: half
/// a step of its block's scale, amax / 127), vectors kept in F32, and the file type recorded.
#[test]
fn quantised_gguf_models_round_within_their_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = TinySpec::default();
    let path = tiny_model(dir.path(), &spec);
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let heads = (spec.num_attention_heads, spec.num_key_value_heads);
    let (q8, q4k) = (Quantization::Q8_0, Quantization::Q4K);
    for (ty, file_type) in [
        (GgufType::F16, 1u32),
        (GgufType::Quantized(q8), 7),
        // The tiny model's rows (32, 64) take Q4_K's fallback, Q5_0.
        (GgufType::Quantized(q4k), 14),
    ] {
        let file = dir.path().join(format!("{file_type}.gguf"));
        write_gguf_model(&mut model, &path, "tiny", ty, &file).expect("write");
        let mut f = std::fs::File::open(&file).expect("open");
        let content = gguf_file::Content::read(&mut f).expect("read");
        assert_eq!(
            content.metadata["general.file_type"].to_u32().expect("u32"),
            file_type
        );
        let weights: Vec<(String, Tensor)> = model
            .base_weights_mut()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect();
        for (hf, w) in weights {
            let gguf = match hf.as_str() {
                "model.embed_tokens.weight" => "token_embd.weight".to_string(),
                "model.norm.weight" => "output_norm.weight".to_string(),
                "lm_head.weight" => "output.weight".to_string(),
                _ => {
                    let module = hf.strip_suffix(".weight").expect("weight");
                    let family = model.config().family;
                    let g = peft_studio_engine::model::gguf::tensors::gguf_module(module, &family)
                        .expect("mapped");
                    format!("{g}.weight")
                }
            };
            let q = content.tensor(&mut f, &gguf, &Device::Cpu).expect(&gguf);
            let w = if gguf.contains("attn_q") {
                permute(&w, heads.0).expect("permute")
            } else if gguf.contains("attn_k") {
                permute(&w, heads.1).expect("permute")
            } else {
                w
            };
            let back = q.dequantize(&Device::Cpu).expect("dequantize");
            let err = max_abs_diff(&back, &w);
            if w.rank() == 1 {
                assert_eq!(q.dtype(), candle_core::quantized::GgmlDType::F32, "{gguf}");
                assert_eq!(err, 0.0, "{gguf}");
                continue;
            }
            let amax = w
                .abs()
                .and_then(|a| a.flatten_all()?.max(0)?.to_scalar::<f32>())
                .expect("amax");
            let bound = match ty {
                GgufType::Quantized(Quantization::Q8_0) => amax / 127.0 * 0.5 + amax * 1e-3,
                // Q5_0: steps of amax/16 (a whole step at the clipped end of the range).
                GgufType::Quantized(_) => amax / 16.0 + amax * 1e-3,
                _ => amax * 1e-3,
            };
            assert!(err <= bound, "{gguf}: {err} > {bound}");
        }
    }
}

/// A GGUF LoRA read back gives the matrices it was written from: q/k `lora_b` un-permuted,
/// one rank, the file's alpha; a LoRA for another model's shapes is refused with the tensor
/// named.
#[test]
fn gguf_lora_reads_back_what_was_written() {
    use peft_studio_engine::gguf::lora::write_gguf_lora;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let method = lora_method(4, "q_proj,k_proj,v_proj,o_proj,up_proj");
    let vars = method.apply(&mut model, 3).expect("apply");
    for (name, v) in &vars {
        if name.ends_with("lora_B.weight") {
            let noise = Tensor::randn(0f32, 1.0, v.dims(), &Device::Cpu).expect("noise");
            v.set(&noise).expect("set");
        }
    }
    let mut params: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let out = dir.path().join("lora.gguf");
    write_gguf_lora(model.config(), &method, &params, &out).expect("write");
    let back = read_gguf_lora(&out, model.config()).expect("read");
    assert_eq!(back.r, 4);
    assert_eq!(back.alpha, method.lora_alpha);
    assert_eq!(back.params.len(), params.len());
    for ((n, t), (bn, bt)) in params.iter().zip(&back.params) {
        assert_eq!(n, bn);
        assert_eq!(max_abs_diff(t, bt), 0.0, "{n}");
    }

    let wide = tiny_model(
        &dir.path().join("wide"),
        &TinySpec {
            hidden_size: 64,
            ..TinySpec::default()
        },
    );
    let wide = load_model(&wide, DType::F32, &Device::Cpu).expect("load");
    let err = read_gguf_lora(&out, wide.config())
        .err()
        .expect("another model's shapes")
        .to_string();
    assert!(
        err.contains("lora.gguf") && err.contains("another model"),
        "{err}"
    );
}
