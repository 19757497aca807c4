//! Exported PEFT directories: PEFT's key names, shapes, dtype, metadata and config; and an
//! exported adapter loads back onto the base model with the same logits.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use peft_studio_engine::export::{write_peft_dir, ExportInfo};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::model::{load_model, ForwardCtx};
use peft_studio_engine::ops::SplitMix64;
use peft_studio_engine::peft::load::attach_lora;
use peft_studio_engine::peft::MethodConfig;

use crate::common::{lora_method, max_abs_diff, randomise_b, tiny_model};

/// Writes `vars` as a PEFT directory at `out`.
fn write_adapter(out: &Path, method: &MethodConfig, vars: &[(String, Var)]) {
    let params: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    write_peft_dir(
        out,
        method,
        &ExportInfo {
            base_model: "tiny".into(),
            task_type: "CAUSAL_LM",
            multimodal_layers: None,
        },
        &params,
    )
    .expect("export");
}

#[test]
fn peft_keys_shapes_and_config_for_all_seven_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = TinySpec::default();
    let path = tiny_model(dir.path(), &spec);
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let method = lora_method(4, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    let vars = method.apply(&mut model, 0).expect("apply");
    let out = dir.path().join("adapter");
    write_adapter(&out, &method, &vars);

    let bytes = std::fs::read(out.join("adapter_model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let (h, i, kv) = (32usize, 64usize, 16usize);
    let shapes = [
        ("self_attn.q_proj", h, h),
        ("self_attn.k_proj", h, kv),
        ("self_attn.v_proj", h, kv),
        ("self_attn.o_proj", h, h),
        ("mlp.gate_proj", h, i),
        ("mlp.up_proj", h, i),
        ("mlp.down_proj", i, h),
    ];
    let mut expected: Vec<(String, Vec<usize>)> = Vec::new();
    for l in 0..2 {
        for (m, fan_in, fan_out) in shapes {
            expected.push((
                format!("base_model.model.model.layers.{l}.{m}.lora_A.weight"),
                vec![4, fan_in],
            ));
            expected.push((
                format!("base_model.model.model.layers.{l}.{m}.lora_B.weight"),
                vec![fan_out, 4],
            ));
        }
    }
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut want_names: Vec<String> = expected.iter().map(|e| e.0.clone()).collect();
    want_names.sort();
    assert_eq!(names, want_names);
    for (name, shape) in &expected {
        let t = st.tensor(name).expect("tensor");
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );

    let text = std::fs::read_to_string(out.join("adapter_config.json")).expect("config");
    let cfg: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["base_model_name_or_path"], "tiny");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!([
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ])
    );
    let keys: Vec<&String> = cfg.as_object().expect("object").keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys are written sorted, as PEFT writes them");
    assert!(text.contains("\n  \"alpha_pattern\""), "indent 2");
}

fn logits(model: &peft_studio_engine::model::LlamaModel) -> Tensor {
    let ids = Tensor::new(&[[4u32, 8, 15, 16, 23, 42]], &Device::Cpu).expect("ids");
    model
        .forward(&ids, None, &ForwardCtx::eval())
        .expect("forward")
}

fn roundtrip(path: &Path, out: &Path, targets: &str, rslora: bool, dora: bool) {
    let mut model = load_model(path, DType::F32, &Device::Cpu).expect("load");
    let mut method = lora_method(4, targets);
    method.use_rslora = rslora;
    method.use_dora = dora;
    let vars = method.apply(&mut model, 9).expect("apply");
    randomise_b(&vars);
    let want = logits(&model);
    write_adapter(out, &method, &vars);

    let mut fresh = load_model(path, DType::F32, &Device::Cpu).expect("load");
    let base = logits(&fresh);
    attach_lora(&mut fresh, out, None).expect("attach");
    let got = logits(&fresh);
    let diff = max_abs_diff(&want, &got);
    let moved = max_abs_diff(&want, &base);
    assert!(
        diff < 1e-6,
        "{targets}: reloaded adapter changes logits by {diff}"
    );
    assert!(
        moved > 1e-4,
        "{targets}: the adapter must change the logits (moved {moved})"
    );
}

#[test]
fn exported_adapter_reloads_with_identical_logits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(
        dir.path(),
        &TinySpec {
            qkv_bias: true,
            ..Default::default()
        },
    );
    roundtrip(&path, &dir.path().join("a"), "all-linear", false, false);
    roundtrip(
        &path,
        &dir.path().join("b"),
        ".*\\.(q_proj|v_proj)",
        true,
        false,
    );
    roundtrip(&path, &dir.path().join("c"), "all-linear", false, true);
}

/// A DoRA export: PEFT's names and shapes for the magnitudes, and `use_dora` in the config.
#[test]
fn dora_export_has_magnitudes_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let mut method = lora_method(4, "q_proj,down_proj");
    method.use_dora = true;
    let vars = method.apply(&mut model, 0).expect("apply");
    let out = dir.path().join("adapter");
    write_adapter(&out, &method, &vars);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut magnitudes: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.ends_with("lora_magnitude_vector"))
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    magnitudes.sort();
    assert_eq!(
        magnitudes,
        vec![
            (
                "base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector".to_string(),
                vec![32]
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
                    .to_string(),
                vec![32]
            ),
            (
                "base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector".to_string(),
                vec![32]
            ),
            (
                "base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector"
                    .to_string(),
                vec![32]
            ),
        ]
    );
    assert_eq!(st.tensors().len(), 12);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("cfg"),
    )
    .expect("json");
    assert_eq!(cfg["use_dora"], true);
    // A DoRA file whose config lost `use_dora` is refused, not half-applied.
    let text = std::fs::read_to_string(out.join("adapter_config.json")).expect("cfg");
    std::fs::write(
        out.join("adapter_config.json"),
        text.replace("\"use_dora\": true", "\"use_dora\": false"),
    )
    .expect("w");
    let mut fresh = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let err = attach_lora(&mut fresh, &out, None)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("use_dora"), "{err}");
}

#[test]
fn adapter_for_another_base_model_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&small, DType::F32, &Device::Cpu).expect("load");
    let method = lora_method(4, "q_proj");
    let vars = method.apply(&mut model, 0).expect("apply");
    let out = dir.path().join("adapter");
    write_adapter(&out, &method, &vars);

    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let wide = tiny_model(
        &other_dir,
        &TinySpec {
            hidden_size: 48,
            ..Default::default()
        },
    );
    let mut other = load_model(&wide, DType::F32, &Device::Cpu).expect("load");
    let err = attach_lora(&mut other, &out, None)
        .expect_err("mismatched adapter must be rejected")
        .to_string();
    assert!(err.contains("another base model"), "{err}");
    assert!(err.contains("adapter_model.safetensors"), "{err}");
}

/// An IA3 export: PEFT's names, [out, 1] / [1, in] shapes and config; reloaded it gives the
/// same logits.
#[test]
fn ia3_export_follows_peft_and_reloads() {
    use peft_studio_engine::peft::{load::attach_adapter, MethodKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let method = MethodConfig {
        kind: MethodKind::Ia3,
        ..MethodConfig::default()
    };
    let vars = method.apply(&mut model, 0).expect("apply");
    let mut rng = SplitMix64::new(2);
    for (_, var) in &vars {
        let data: Vec<f32> = (0..var.elem_count())
            .map(|_| (0.5 + rng.next_f64()) as f32)
            .collect();
        var.set(&Tensor::from_vec(data, var.shape().clone(), &Device::Cpu).expect("t"))
            .expect("set");
    }
    let want = logits(&model);
    let out = dir.path().join("ia3");
    write_adapter(&out, &method, &vars);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut shapes: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    shapes.sort();
    let (i, kv) = (64usize, 16usize);
    let mut expected = Vec::new();
    for l in 0..2 {
        expected.push((
            format!("base_model.model.model.layers.{l}.mlp.down_proj.ia3_l"),
            vec![1, i],
        ));
        expected.push((
            format!("base_model.model.model.layers.{l}.self_attn.k_proj.ia3_l"),
            vec![kv, 1],
        ));
        expected.push((
            format!("base_model.model.model.layers.{l}.self_attn.v_proj.ia3_l"),
            vec![kv, 1],
        ));
    }
    assert_eq!(shapes, expected);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("cfg"),
    )
    .expect("json");
    assert_eq!(cfg["peft_type"], "IA3");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["down_proj", "k_proj", "v_proj"])
    );
    assert_eq!(cfg["feedforward_modules"], serde_json::json!(["down_proj"]));
    assert_eq!(cfg["init_ia3_weights"], true);
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    let mut fresh = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    attach_adapter(&mut fresh, &out, None).expect("attach");
    let diff = max_abs_diff(&want, &logits(&fresh));
    assert!(diff < 1e-6, "reloaded IA3 changes logits by {diff}");
}

/// Merging folds each adapter in exactly as PEFT's formulas say (computed here on their own),
/// and the merged model gives the adapted model's logits.
#[test]
fn merged_weights_equal_w_plus_delta_and_keep_the_logits() {
    use peft_studio_engine::peft::merge::merge_adapters;
    use peft_studio_engine::peft::MethodKind;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(
        dir.path(),
        &TinySpec {
            qkv_bias: true,
            ..Default::default()
        },
    );
    let mut dora = lora_method(4, "all-linear");
    dora.use_dora = true;
    let mut rslora = lora_method(4, "q_proj,v_proj");
    rslora.use_rslora = true;
    let ia3 = MethodConfig {
        kind: MethodKind::Ia3,
        ..MethodConfig::default()
    };
    for (label, method) in [
        ("lora", lora_method(4, "all-linear")),
        ("rslora", rslora),
        ("dora", dora),
        ("ia3", ia3),
    ] {
        let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
        let vars = method.apply(&mut model, 4).expect("apply");
        randomise_b(&vars);
        let mut rng = SplitMix64::new(8);
        for (name, var) in &vars {
            if name.ends_with("ia3_l") || name.ends_with("lora_magnitude_vector") {
                let old: Vec<f32> = var
                    .as_tensor()
                    .flatten_all()
                    .expect("f")
                    .to_vec1()
                    .expect("v");
                let new: Vec<f32> = old
                    .iter()
                    .map(|v| v * (0.8 + 0.4 * rng.next_f64() as f32))
                    .collect();
                var.set(&Tensor::from_vec(new, var.shape().clone(), &Device::Cpu).expect("t"))
                    .expect("set");
            }
        }
        let want = logits(&model);
        // Independent expectations from the raw tensors.
        let q = "model.layers.1.self_attn.v_proj";
        let lin = model
            .linears()
            .into_iter()
            .find(|l| l.name == q)
            .expect("v_proj")
            .clone();
        let get = |suffix: &str| {
            vars.iter()
                .find(|(n, _)| n == &format!("{q}.{suffix}"))
                .map(|(_, v)| v.as_tensor().clone())
        };
        let w = lin.weight.as_dense().expect("a dense base").clone();
        let (expected_w, expected_b) = match label {
            "ia3" => {
                let l = get("ia3_l").expect("l");
                (
                    w.broadcast_mul(&l).expect("w"),
                    lin.bias
                        .as_ref()
                        .map(|b| b.mul(&l.flatten_all().expect("f")).expect("b")),
                )
            }
            _ => {
                let (a, b) = (
                    get("lora_A.weight").expect("a"),
                    get("lora_B.weight").expect("b"),
                );
                let s = if label == "rslora" {
                    8.0 / 2.0
                } else {
                    8.0 / 4.0
                };
                let updated = (&w + (b.matmul(&a).expect("ba") * s).expect("s")).expect("w");
                let w = match get("lora_magnitude_vector") {
                    Some(m) => {
                        let norm = updated
                            .sqr()
                            .expect("sq")
                            .sum_keepdim(1)
                            .expect("sum")
                            .sqrt()
                            .expect("sqrt");
                        updated
                            .broadcast_mul(
                                &m.unsqueeze(1)
                                    .expect("u")
                                    .broadcast_div(&norm)
                                    .expect("div"),
                            )
                            .expect("mul")
                    }
                    None => updated,
                };
                (w, lin.bias.clone())
            }
        };
        assert!(merge_adapters(&mut model).expect("merge") > 0);
        let merged = model
            .linears()
            .into_iter()
            .find(|l| l.name == q)
            .expect("v_proj")
            .clone();
        assert!(merged.lora.is_none() && merged.ia3.is_none());
        assert!(
            max_abs_diff(merged.weight.as_dense().expect("dense"), &expected_w) < 1e-6,
            "{label}: merged weight differs"
        );
        if let (Some(got), Some(want)) = (&merged.bias, &expected_b) {
            assert!(
                max_abs_diff(got, want) < 1e-6,
                "{label}: merged bias differs"
            );
        }
        let diff = max_abs_diff(&logits(&model), &want);
        assert!(diff < 1e-4, "{label}: merged logits differ by {diff}");
    }
}

/// A prompt-tuning export: the bare `prompt_embeddings` tensor and PEFT's config; reloaded
/// it gives the same logits (of the real tokens only), and it cannot be merged.
#[test]
fn prompt_tuning_export_follows_peft_and_reloads() {
    use peft_studio_engine::peft::{load::attach_adapter, merge::merge_adapters, MethodKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let base = logits(&model);
    let method = MethodConfig {
        kind: MethodKind::PromptTuning,
        num_virtual_tokens: 4,
        ..MethodConfig::default()
    };
    let vars = method.apply(&mut model, 0).expect("apply");
    let want = logits(&model);
    assert_eq!(
        want.dims(),
        base.dims(),
        "outputs cover the real tokens only"
    );
    let out = dir.path().join("prompt");
    write_adapter(&out, &method, &vars);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    assert_eq!(names, vec![("prompt_embeddings".to_string(), vec![4, 32])]);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("cfg"),
    )
    .expect("json");
    assert_eq!(cfg["peft_type"], "PROMPT_TUNING");
    assert_eq!(cfg["num_virtual_tokens"], 4);
    assert_eq!(cfg["token_dim"], 32);
    assert_eq!(cfg["num_transformer_submodules"], 1);
    assert_eq!(cfg["prompt_tuning_init"], "RANDOM");
    let mut fresh = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    attach_adapter(&mut fresh, &out, None).expect("attach");
    assert!(max_abs_diff(&logits(&fresh), &want) < 1e-6);
    assert!(
        max_abs_diff(&base, &want) > 1e-4,
        "the virtual tokens change the outputs"
    );
    let err = merge_adapters(&mut fresh)
        .expect_err("no merge")
        .to_string();
    assert!(err.contains("virtual tokens"), "{err}");
}

/// A prefix-tuning export: the bare `prompt_embeddings` [tokens, layers·2·kv·head_dim] and
/// PEFT's config; reloaded it gives the same logits, also through a KV cache.
#[test]
fn prefix_tuning_export_follows_peft_and_reloads() {
    use peft_studio_engine::generate::{generate, GenerateOptions};
    use peft_studio_engine::peft::{load::attach_adapter, MethodKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let method = MethodConfig {
        kind: MethodKind::PrefixTuning,
        num_virtual_tokens: 3,
        ..MethodConfig::default()
    };
    let vars = method.apply(&mut model, 0).expect("apply");
    let want = logits(&model);
    let out = dir.path().join("prefix");
    write_adapter(&out, &method, &vars);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    // 2 layers × (keys, values) × 2 key/value heads × head_dim 8.
    assert_eq!(
        names,
        vec![("prompt_embeddings".to_string(), vec![3, 2 * 2 * 16])]
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("cfg"),
    )
    .expect("json");
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(cfg["num_virtual_tokens"], 3);
    assert_eq!(cfg["prefix_projection"], false);
    let mut fresh = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    attach_adapter(&mut fresh, &out, None).expect("attach");
    assert!(max_abs_diff(&logits(&fresh), &want) < 1e-6);
    // Greedy generation through the KV cache picks what full forwards pick.
    let opts = GenerateOptions {
        max_new_tokens: 6,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    let mut cached = Vec::new();
    generate(&fresh, &[4, 8, 15], &[], &opts, |id| cached.push(id)).expect("generate");
    let mut ids = vec![4u32, 8, 15];
    for _ in 0..6 {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .expect("ids")
            .unsqueeze(0)
            .expect("u");
        let l = fresh
            .forward(&input, None, &ForwardCtx::eval())
            .expect("forward");
        let last: Vec<f32> = l
            .get(0)
            .expect("b")
            .get(ids.len() - 1)
            .expect("t")
            .to_vec1()
            .expect("v");
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        ids.push(best as u32);
    }
    assert_eq!(cached, ids[3..].to_vec());
}

/// A Houlsby export in the adapters library's format: its key names and config; reloaded it
/// gives the same logits; merging refuses it.
#[test]
fn bottleneck_export_follows_the_adapters_library_and_reloads() {
    use peft_studio_engine::export::adapters_lib::write_adapters_dir;
    use peft_studio_engine::model::LlamaConfig;
    use peft_studio_engine::peft::{load::attach_adapter, merge::merge_adapters, MethodKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let method = MethodConfig {
        kind: MethodKind::Houlsby,
        reduction_factor: 4,
        ..MethodConfig::default()
    };
    let vars = method.apply(&mut model, 0).expect("apply");
    let want = logits(&model);
    let out = dir.path().join("houlsby");
    let params: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let cfg = LlamaConfig::from_path(&path).expect("config");
    write_adapters_dir(&out, &method, &cfg, "tiny", &params).expect("export");
    let bytes = std::fs::read(out.join("adapter.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    assert_eq!(names.len(), 16);
    assert_eq!(
        names[0],
        "model.layers.0.attention_adapters.adapters.houlsby.adapter_down.0.bias"
    );
    assert_eq!(
        st.tensor("model.layers.1.output_adapters.adapters.houlsby.adapter_up.weight")
            .expect("t")
            .shape(),
        &[32, 8]
    );
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("cfg"),
    )
    .expect("json");
    assert_eq!(cfg_json["name"], "houlsby");
    assert_eq!(cfg_json["config"]["non_linearity"], "swish");
    assert_eq!(cfg_json["config"]["mh_adapter"], true);
    assert_eq!(cfg_json["config"]["reduction_factor"], 4);
    assert_eq!(cfg_json["hidden_size"], 32);
    let mut fresh = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    attach_adapter(&mut fresh, &out, None).expect("attach");
    assert!(max_abs_diff(&logits(&fresh), &want) < 1e-6);
    let err = merge_adapters(&mut fresh)
        .expect_err("no merge")
        .to_string();
    assert!(err.contains("non-linear"), "{err}");
}

/// Prompt tuning's TEXT init starts from the text's token embeddings, repeated to the number
/// of virtual tokens (PEFT's rule), and the export records the text and the tokenizer.
#[test]
fn prompt_tuning_text_init_repeats_the_text_tokens_and_is_recorded() {
    use peft_studio_engine::peft::{prompt::text_init_ids, MethodKind, PromptInit};
    use peft_studio_engine::tokenizer::TextTokenizer;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let tok = TextTokenizer::load(&path, &[]).expect("tokenizer");
    let method = MethodConfig {
        kind: MethodKind::PromptTuning,
        num_virtual_tokens: 7,
        prompt_tuning_init: PromptInit::Text,
        prompt_tuning_init_text: Some("ok!".into()),
        ..MethodConfig::default()
    };
    let err = method
        .apply(&mut model, 0)
        .expect_err("no tokenizer")
        .to_string();
    assert!(err.contains("tokenizer"), "{err}");
    let vars = method.apply_with(&mut model, 0, Some(&tok)).expect("apply");
    let ids = text_init_ids(&tok.encode("ok!", true).expect("encode"), 7);
    assert_eq!(ids.len(), 7);
    assert_eq!(ids[..3], ids[3..6], "the three text tokens repeat");
    let want = model
        .embed_tokens()
        .rows(&Tensor::new(ids.as_slice(), &Device::Cpu).expect("ids"))
        .expect("rows");
    assert_eq!(max_abs_diff(vars[0].1.as_tensor(), &want), 0.0);
    let out = dir.path().join("text");
    write_adapter(&out, &method, &vars);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("cfg"),
    )
    .expect("json");
    assert_eq!(cfg["prompt_tuning_init"], "TEXT");
    assert_eq!(cfg["prompt_tuning_init_text"], "ok!");
    assert_eq!(
        cfg["tokenizer_name_or_path"],
        cfg["base_model_name_or_path"]
    );
    let empty = MethodConfig {
        prompt_tuning_init_text: Some("  ".into()),
        ..method
    };
    let err = empty
        .apply_with(&mut model, 0, Some(&tok))
        .expect_err("empty text")
        .to_string();
    assert!(err.contains("prompt_tuning_init_text"), "{err}");
}

/// The token ids PEFT initialises from for a text on SmolLM2 (`tokenizer(text)["input_ids"]`
/// in transformers 5.24, PEFT 0.21), which the studio's tokenizer must reproduce.
#[test]
fn prompt_tuning_text_ids_match_peft_on_smollm2() {
    use peft_studio_engine::peft::prompt::text_init_ids;
    let Some(gguf) = std::env::var_os("PEFT_STUDIO_SMOLLM2_GGUF") else {
        assert!(std::env::var("PEFT_STUDIO_REQUIRE_REAL_MODEL").as_deref() != Ok("1"));
        eprintln!("skipped: set PEFT_STUDIO_SMOLLM2_GGUF");
        return;
    };
    let model = peft_studio_engine::model::gguf::GgufModel::open(Path::new(&gguf)).expect("gguf");
    let tok = model.text_tokenizer().expect("tokenizer");
    let text = "Classify whether the review is positive or negative:";
    let ids = tok.encode(text, false).expect("encode").get_ids().to_vec();
    let peft = [8530, 1282, 1991, 260, 2523, 314, 2731, 355, 3524, 42];
    assert_eq!(ids, peft);
    let sixteen = text_init_ids(&ids, 16);
    assert_eq!(sixteen[10..], peft[..6]);
}

/// A LoRA as llama.cpp loads it: the adapter keys, `<gguf>.weight.lora_a` with ne = [in, r]
/// holding A and `.lora_b` with ne = [r, out] holding B, q/k `lora_b` rows in llama.cpp's
/// rotary order (undoing it gives B back), rsLoRA's scale kept as alpha / r = alpha / √r.
/// DoRA is refused with the reason.
#[test]
fn gguf_lora_export_follows_llama_cpp() {
    use candle_core::quantized::gguf_file;
    use peft_studio_engine::gguf::lora::write_gguf_lora;
    use peft_studio_engine::model::gguf::tensors::unpermute;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = TinySpec {
        num_attention_heads: 4,
        num_key_value_heads: 2,
        ..TinySpec::default()
    };
    let path = tiny_model(dir.path(), &spec);
    let mut model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let mut method = lora_method(4, "q_proj,k_proj,v_proj,o_proj,down_proj");
    method.use_rslora = true;
    method.lora_alpha = 8.0;
    let vars = method.apply(&mut model, 0).expect("apply");
    let mut rng = SplitMix64::new(7);
    for (name, v) in &vars {
        if name.ends_with("lora_B.weight") {
            let dims = v.dims().to_vec();
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
            v.set(&Tensor::from_vec(values, dims, &Device::Cpu).expect("t"))
                .expect("set");
        }
    }
    let params: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let cfg = model.config().clone();
    let out = dir.path().join("adapter.gguf");
    write_gguf_lora(&cfg, &method, &params, &out).expect("write");

    let bytes = std::fs::read(&out).expect("read");
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(
        u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        3
    );
    let mut file = std::fs::File::open(&out).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    let text = |k: &str| content.metadata[k].to_string().expect("string").clone();
    assert_eq!(text("general.type"), "adapter");
    assert_eq!(text("general.architecture"), "llama");
    assert_eq!(text("adapter.type"), "lora");
    let alpha = content.metadata["adapter.lora.alpha"]
        .to_f32()
        .expect("f32");
    assert!(
        (alpha / 4.0 - 8.0 / 2.0).abs() < 1e-6,
        "alpha/r = 8/√4, got {alpha}"
    );
    assert_eq!(content.tensor_infos.len(), 2 * 5 * cfg.num_hidden_layers);
    let mut get = |name: &str| {
        content
            .tensor(&mut file, name, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .dequantize(&Device::Cpu)
            .expect("f32")
    };
    let trained = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .expect(name)
            .1
            .clone()
    };
    for (hf, gguf, heads) in [
        ("self_attn.q_proj", "attn_q", Some(4)),
        ("self_attn.k_proj", "attn_k", Some(2)),
        ("self_attn.v_proj", "attn_v", None),
        ("mlp.down_proj", "ffn_down", None),
    ] {
        let (a, b) = (
            trained(&format!("model.layers.1.{hf}.lora_A.weight")),
            trained(&format!("model.layers.1.{hf}.lora_B.weight")),
        );
        let info = &content.tensor_infos[&format!("blk.1.{gguf}.weight.lora_a")];
        let (r, fan_in) = a.dims2().expect("a");
        // candle lists GGUF's ne in reverse: [r, in] here is ne = [in, r].
        assert_eq!(info.shape.dims(), &[r, fan_in]);
        assert_eq!(
            max_abs_diff(&get(&format!("blk.1.{gguf}.weight.lora_a")), &a),
            0.0
        );
        let gb = get(&format!("blk.1.{gguf}.weight.lora_b"));
        assert_eq!(gb.dims(), b.dims());
        let back = match heads {
            Some(h) => {
                assert!(max_abs_diff(&gb, &b) > 0.0, "{hf}: rows are permuted");
                unpermute(&gb, h).expect("unpermute")
            }
            None => gb,
        };
        assert_eq!(max_abs_diff(&back, &b), 0.0, "{hf}");
    }

    let dora = peft_studio_engine::peft::MethodConfig {
        use_dora: true,
        ..method
    };
    let err = write_gguf_lora(&cfg, &dora, &params, &dir.path().join("d.gguf"))
        .expect_err("dora")
        .to_string();
    assert!(err.contains("DoRA") && err.contains("merged"), "{err}");
}
