//! Gemma 3's multimodal checkpoints (4B–27B, `Gemma3ForConditionalGeneration`): the studio
//! runs their text decoder. The checkpoints here are a tiny Gemma 3 text model with its
//! tensors renamed as each naming stores them, beside vision tensors that must be left alone.
//! (tests/interop/run checks the same against transformers' own multimodal checkpoint.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use peft_studio_engine::export::merged::write_merged_model;
use peft_studio_engine::export::peft::{write_peft_dir, ExportInfo};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::fsutil::{safetensors_bytes, write_atomic};
use peft_studio_engine::library::weights::{check_folder, outside_decoder_parameters};
use peft_studio_engine::model::family;
use peft_studio_engine::model::load::read_safetensors;
use peft_studio_engine::model::{load_model, ForwardCtx, LlamaModel};
use peft_studio_engine::peft::load::attach_adapter;

use crate::common::{lora_method, max_abs_diff, randomise_b, tiny_model};

/// transformers 5's module paths, and the hub's original file names (what transformers 5.25's
/// `save_pretrained` still writes).
const ROOTS: [(&str, &str); 2] = [
    ("model.language_model.", "model."),
    ("language_model.model.", ""),
];

/// Tensors outside the decoder: a vision attention projection (what a bare `q_proj` target
/// would reach) and the projector.
fn vision_tensors(prefix: &str) -> Vec<(String, Tensor)> {
    let t = |n: usize, m: usize| {
        let data: Vec<f32> = (0..n * m).map(|i| i as f32 * 0.01).collect();
        Tensor::from_vec(data, (n, m), &Device::Cpu).expect("tensor")
    };
    vec![
        (
            format!("{prefix}vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"),
            t(4, 4),
        ),
        (
            format!("{prefix}multi_modal_projector.mm_input_projection_weight"),
            t(4, 32),
        ),
    ]
}

/// The tiny Gemma 3 text model in `text` as a multimodal checkpoint in `out`, its decoder
/// under `root` and the vision tensors under `vision_prefix`.
fn multimodal_copy(text: &Path, out: &Path, root: &str, vision_prefix: &str) -> PathBuf {
    std::fs::create_dir_all(out).expect("dir");
    let mut text_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(text.join("config.json")).expect("read"))
            .expect("json");
    text_config
        .as_object_mut()
        .expect("object")
        .remove("architectures");
    let config = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text_config,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 4},
        "tie_word_embeddings": true,
    });
    write_atomic(&out.join("config.json"), config.to_string().as_bytes()).expect("config");
    let mut tensors: Vec<(String, Tensor)> = read_safetensors(&text.join("model.safetensors"))
        .expect("read")
        .into_iter()
        .map(|(name, t)| {
            let rest = name
                .strip_prefix("model.")
                .expect("decoder names start with model.");
            (format!("{root}{rest}"), t)
        })
        .collect();
    tensors.extend(vision_tensors(vision_prefix));
    write_atomic(
        &out.join("model.safetensors"),
        &safetensors_bytes(&tensors, None).expect("bytes"),
    )
    .expect("weights");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(text.join(f), out.join(f)).expect("tokenizer");
    }
    out.to_path_buf()
}

fn gemma3_text(dir: &Path) -> PathBuf {
    let spec = TinySpec {
        architecture: "Gemma3ForCausalLM",
        tie_word_embeddings: true,
        num_hidden_layers: 3,
        ..Default::default()
    };
    tiny_model(dir, &spec)
}

fn logits(model: &LlamaModel) -> Tensor {
    let ids = Tensor::new(&[[4u32, 8, 15, 16, 23, 42, 7, 99]], &Device::Cpu).expect("ids");
    model
        .forward(&ids, None, &ForwardCtx::eval())
        .expect("forward")
}

/// In either naming, the checkpoint loads as its decoder alone: the same logits bit for bit,
/// the same weights counted by the library, and the family shown as a vision model's text.
#[test]
fn a_multimodal_checkpoint_runs_its_text_decoder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = gemma3_text(dir.path());
    let reference = logits(&load_model(&text, DType::F32, &Device::Cpu).expect("load"));
    let text_summary = check_folder(&text).expect("check text");
    for (i, (root, vision)) in ROOTS.iter().enumerate() {
        let mm = multimodal_copy(&text, &dir.path().join(format!("mm{i}")), root, vision);
        let model = load_model(&mm, DType::F32, &Device::Cpu).expect("load multimodal");
        assert_eq!(max_abs_diff(&logits(&model), &reference), 0.0, "{root}");
        let summary = check_folder(&mm).expect("check multimodal");
        assert_eq!(summary.parameters, text_summary.parameters);
        // PEFT's "all params" counts the vision tensors too: 4 × 4 + 4 × 32.
        let outside = outside_decoder_parameters(&summary.config, &mm).expect("count");
        assert_eq!(outside, 144);
        assert_eq!(
            summary.config.checkpoint_architecture(),
            "Gemma3ForConditionalGeneration"
        );
        assert_eq!(summary.config.architecture, "Gemma3ForCausalLM");
    }
    assert_eq!(
        family::label("Gemma3ForConditionalGeneration"),
        "Gemma 3 (vision)"
    );
}

/// A LoRA on the decoder is exported under the multimodal model's module paths with a
/// `target_modules` pattern that leaves the vision tower alone, loads back (a vision module's
/// LoRA in the file is passed over), and merges into a folder that keeps the vision tensors
/// as they were and its base's naming.
#[test]
fn adapters_and_merges_of_a_multimodal_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = gemma3_text(dir.path());
    let mm = multimodal_copy(&text, &dir.path().join("mm"), ROOTS[1].0, ROOTS[1].1);
    let mut model = load_model(&mm, DType::F32, &Device::Cpu).expect("load");
    let method = lora_method(4, "q_proj,v_proj");
    let vars = method.apply(&mut model, 3).expect("apply");
    randomise_b(&vars);
    let adapted = logits(&model);
    let params: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let adapter = dir.path().join("adapter");
    let info = ExportInfo {
        base_model: mm.display().to_string(),
        task_type: "CAUSAL_LM",
        multimodal_layers: model.config().multimodal_layers(),
    };
    write_peft_dir(&adapter, &method, &info, &params).expect("export");
    let weights = adapter.join("adapter_model.safetensors");
    let mut saved = read_safetensors(&weights).expect("read adapter");
    assert!(saved
        .keys()
        .all(|k| k.starts_with("base_model.model.model.language_model.layers.")));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(
        config["target_modules"],
        r"model\.language_model\.layers\.\d+\.(?:self_attn\.q_proj|self_attn\.v_proj)"
    );
    // PEFT with a bare `q_proj` target also wraps the vision tower: such a file holds its LoRA.
    let vision =
        "base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj";
    let ones = Tensor::ones((4, 4), DType::F32, &Device::Cpu).expect("ones");
    saved.insert(format!("{vision}.lora_A.weight"), ones.clone());
    saved.insert(format!("{vision}.lora_B.weight"), ones);
    let saved: Vec<(String, Tensor)> = saved.into_iter().collect();
    write_atomic(&weights, &safetensors_bytes(&saved, None).expect("bytes")).expect("write");
    let mut back = load_model(&mm, DType::F32, &Device::Cpu).expect("load");
    attach_adapter(&mut back, &adapter, None).expect("attach");
    assert!(max_abs_diff(&logits(&back), &adapted) < 1e-6);

    let merged = dir.path().join("merged");
    write_merged_model(&model, &mm, &merged, usize::MAX).expect("merge");
    let written: HashMap<String, Tensor> =
        read_safetensors(&merged.join("model.safetensors")).expect("read merged");
    for (name, t) in vision_tensors("") {
        assert_eq!(
            max_abs_diff(&written[&name], &t),
            0.0,
            "{name} carried as it was"
        );
    }
    assert!(written.contains_key("language_model.model.layers.0.self_attn.q_proj.weight"));
    assert!(
        !written.keys().any(|k| k.starts_with("model.")),
        "the base's naming kept"
    );
    let reloaded = load_model(&merged, DType::F32, &Device::Cpu).expect("load merged");
    assert!(max_abs_diff(&logits(&reloaded), &adapted) < 1e-5);
}

/// The hub's Gemma 3 4B config.json names five fields of its text decoder and leaves the rest
/// to `Gemma3TextConfig`'s defaults; read as transformers 5.25 reads it (the figures below are
/// what `Gemma3Config(**config).text_config` holds).
#[test]
fn the_hub_gemma3_4b_config_reads_as_transformers_reads_it() {
    use peft_studio_engine::model::family::LayerKind;
    use peft_studio_engine::model::LlamaConfig;
    let config = r#"{
      "architectures": ["Gemma3ForConditionalGeneration"],
      "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
      "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
      "model_type": "gemma3",
      "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
        "model_type": "gemma3_text", "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
      "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
      "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
        "model_type": "siglip_vision_model", "num_attention_heads": 16,
        "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}
    }"#;
    let c = LlamaConfig::from_json(config).expect("parse");
    assert_eq!(c.architecture, "Gemma3ForCausalLM");
    assert_eq!(
        c.checkpoint_architecture(),
        "Gemma3ForConditionalGeneration"
    );
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
        (2560, 10240, 34)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (8, 4, 256)
    );
    assert_eq!((c.vocab_size, c.max_position_embeddings), (262208, 131072));
    assert_eq!(c.attention_scale, 1.0 / 256f64.sqrt());
    assert_eq!(c.sliding_window, Some(1024));
    assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
    assert_eq!(c.rope_linear_factor, 8.0);
    assert_eq!(c.rms_norm_eps, 1e-6);
    let full: Vec<usize> = (0..34)
        .filter(|&l| c.layer_kinds[l] == LayerKind::Full)
        .collect();
    assert_eq!(full, [5, 11, 17, 23, 29]);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.eos_token_ids, [1, 106]);
    assert_eq!(c.stored_dtype, DType::BF16);
    assert_eq!(c.multimodal_layers(), Some(34));
}
