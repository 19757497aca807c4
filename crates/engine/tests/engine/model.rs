//! The decoder against candle-transformers' Llama on the same weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama as reference;
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::model::{load_model, ForwardCtx};

use crate::common::{max_abs_diff, tiny_model};

fn compare_with_candle_transformers(spec: TinySpec) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &spec);
    let dev = Device::Cpu;
    let ours = load_model(&path, DType::F32, &dev).expect("load");

    let cfg_text = std::fs::read_to_string(path.join("config.json")).expect("config");
    let ref_cfg: reference::LlamaConfig =
        serde_json::from_str(&cfg_text).expect("reference config");
    let ref_cfg = ref_cfg.into_config(false);
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(path.join("model.safetensors"), &dev).expect("weights");
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let theirs = reference::Llama::load(vb, &ref_cfg).expect("reference model");

    let ids: Vec<u32> = vec![5, 17, 99, 3, 250, 42, 7, 8, 200, 1];
    for len in [1, 4, ids.len()] {
        let input = Tensor::new(&ids[..len], &dev)
            .expect("ids")
            .unsqueeze(0)
            .expect("batch");
        let mut cache = reference::Cache::new(false, DType::F32, &ref_cfg, &dev).expect("cache");
        let want: Vec<f32> = theirs
            .forward(&input, 0, &mut cache)
            .expect("ref forward")
            .squeeze(0)
            .expect("squeeze")
            .to_vec1()
            .expect("vec");
        let logits = ours
            .forward(&input, None, &ForwardCtx::eval())
            .expect("forward");
        let got: Vec<f32> = logits
            .squeeze(0)
            .expect("b")
            .get(len - 1)
            .expect("last")
            .to_vec1()
            .expect("vec");
        let max_diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "len {len}: logits differ by {max_diff}");
    }
}

#[test]
fn logits_match_candle_transformers_llama() {
    compare_with_candle_transformers(TinySpec::default());
}

#[test]
fn logits_match_candle_transformers_with_tied_embeddings_and_mha() {
    compare_with_candle_transformers(TinySpec {
        tie_word_embeddings: true,
        num_key_value_heads: 4,
        ..Default::default()
    });
}

#[test]
fn qwen2_bias_model_loads_and_bias_changes_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(
        dir.path(),
        &TinySpec {
            qkv_bias: true,
            ..Default::default()
        },
    );
    let model = load_model(&path, DType::F32, &Device::Cpu).expect("load qwen2-style model");
    let biased = model.linears().iter().filter(|l| l.bias.is_some()).count();
    assert_eq!(biased, 2 * 3, "q, k and v of both layers carry a bias");
}

#[test]
fn batched_forward_equals_single_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_model(dir.path(), &TinySpec::default());
    let model = load_model(&path, DType::F32, &Device::Cpu).expect("load");
    let rows = [[1u32, 2, 3, 4], [9, 8, 7, 6]];
    let both = Tensor::new(&rows, &Device::Cpu).expect("ids");
    let batched = model
        .forward(&both, None, &ForwardCtx::eval())
        .expect("forward");
    for (i, row) in rows.iter().enumerate() {
        let single = model
            .forward(
                &Tensor::new(row, &Device::Cpu)
                    .expect("ids")
                    .unsqueeze(0)
                    .expect("b"),
                None,
                &ForwardCtx::eval(),
            )
            .expect("f");
        let diff = max_abs_diff(
            &batched.get(i).expect("row"),
            &single.squeeze(0).expect("s"),
        );
        assert!(diff < 1e-5, "row {i} differs by {diff}");
    }
}
