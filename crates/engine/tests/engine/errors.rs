//! Bad input gets a clear error naming the file, line or field — never a panic.

use peft_studio_engine::data::{load_examples, DataConfig};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::model::{load_model, LlamaConfig};
use peft_studio_engine::peft::MethodConfig;
use peft_studio_engine::plan::count_params;
use peft_studio_engine::run::prepare;
use peft_studio_engine::tokenizer::TextTokenizer;
use peft_studio_engine::train::TrainConfig;

use crate::common::{lora_method, memorisable_dataset, run_config, tiny_model, write};

fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_json(
        &peft_studio_engine::fixtures::config_json(&TinySpec::default()).to_string(),
    )
    .expect("config")
}

#[test]
fn missing_config_json_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_model(
        dir.path(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .expect_err("no config")
    .to_string();
    assert!(
        err.contains("config.json") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let err = LlamaConfig::from_json(
        r#"{"architectures":["GPT2LMHeadModel"],"hidden_size":8,"intermediate_size":8,
        "num_hidden_layers":1,"num_attention_heads":1,"vocab_size":10}"#,
    )
    .expect_err("gpt2")
    .to_string();
    assert!(
        err.contains("GPT2LMHeadModel") && err.contains("LlamaForCausalLM"),
        "{err}"
    );
    // Every family is listed.
    for family in [
        "Gemma3ForCausalLM",
        "Gemma2ForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
    ] {
        assert!(err.contains(family), "{err}");
    }
}

/// A family's own fields, bad: each error names its field.
#[test]
fn bad_family_fields_are_named() {
    let base = r#""architectures":["Gemma2ForCausalLM"],"hidden_size":8,"intermediate_size":8,
        "num_hidden_layers":2,"num_attention_heads":1,"vocab_size":10"#;
    for (extra, field) in [
        (r#""layer_types":["full_attention"]"#, "layer_types"),
        (r#""layer_types":["global","local"]"#, "layer_types"),
        (r#""attn_logit_softcapping":-1"#, "attn_logit_softcapping"),
        (
            r#""final_logit_softcapping":"big""#,
            "final_logit_softcapping",
        ),
        (r#""sliding_window":0"#, "sliding_window"),
        (r#""hidden_activation":"relu""#, "hidden_activation"),
        (r#""query_pre_attn_scalar":0"#, "query_pre_attn_scalar"),
        (
            r#""rope_scaling":{"rope_type":"dynamic","factor":4}"#,
            "rope_scaling",
        ),
        (
            r#""rope_scaling":{"rope_type":"yarn","factor":-4,"original_max_position_embeddings":16}"#,
            "rope_scaling",
        ),
        (
            r#""rope_scaling":{"rope_type":"yarn","factor":4}"#,
            "original_max_position_embeddings",
        ),
    ] {
        let err = LlamaConfig::from_json(&format!("{{{base},{extra}}}"))
            .expect_err(extra)
            .to_string();
        assert!(err.contains(field), "{extra}: {err}");
    }
}

#[test]
fn target_that_matches_nothing_lists_existing_modules() {
    let err = count_params(&tiny_config(), &lora_method(8, "query_key_value"))
        .expect_err("no match")
        .to_string();
    for name in [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    ] {
        assert!(err.contains(name), "{err} should list {name}");
    }
    assert!(err.contains("query_key_value"), "{err}");
}

#[test]
fn rank_zero_is_rejected() {
    let err = count_params(&tiny_config(), &lora_method(0, "q_proj"))
        .expect_err("r = 0")
        .to_string();
    assert!(err.contains("`r`"), "{err}");
}

#[test]
fn layer_out_of_range_is_rejected() {
    let mut m = lora_method(8, "q_proj");
    m.layers_to_transform = Some(vec![0, 5]);
    let err = count_params(&tiny_config(), &m)
        .expect_err("layer 5")
        .to_string();
    assert!(err.contains("layer 5"), "{err}");
}

#[test]
fn freeze_without_modules_is_rejected() {
    let m = MethodConfig {
        kind: peft_studio_engine::peft::MethodKind::Freeze,
        ..Default::default()
    };
    assert!(count_params(&tiny_config(), &m).is_err());
}

fn tokenizer(dir: &std::path::Path) -> TextTokenizer {
    let model = tiny_model(dir, &TinySpec::default());
    TextTokenizer::load(&model, &[]).expect("tokenizer")
}

#[test]
fn empty_dataset_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = tokenizer(dir.path());
    let path = write(dir.path(), "empty.jsonl", "\n  \n");
    let err = load_examples(&path, &tok, &DataConfig::default())
        .expect_err("empty")
        .to_string();
    assert!(
        err.contains("empty.jsonl") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn malformed_jsonl_names_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = tokenizer(dir.path());
    let cases = [
        (
            "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": broken}\n",
            ":3:",
            "not valid JSON",
        ),
        ("{\"text\": \"ok\"}\n[1, 2]\n", ":2:", "JSON object"),
        (
            "{\"prompt\": \"p\"}\n",
            ":1:",
            "prompt-completion record has no \"completion\"",
        ),
        (
            "{\"text\": 5}\n",
            ":1:",
            "field \"text\" is a number, expected a string",
        ),
        (
            "{\"question\": \"q\"}\n",
            ":1:",
            "cannot tell the record format from the fields (question)",
        ),
    ];
    for (text, line, what) in cases {
        let path = write(dir.path(), "bad.jsonl", text);
        let err = load_examples(&path, &tok, &DataConfig::default())
            .expect_err("malformed")
            .to_string();
        assert!(
            err.contains(&format!("bad.jsonl{line}")) && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn missing_tokenizer_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path(), &TinySpec::default());
    std::fs::remove_file(model.join("tokenizer.json")).expect("rm");
    let cfg = run_config(
        dir.path(),
        model,
        memorisable_dataset(dir.path()),
        lora_method(4, "q_proj"),
        TrainConfig::default(),
    );
    let err = prepare(&cfg).err().expect("no tokenizer").to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn truncated_weights_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path(), &TinySpec::default());
    let st = model.join("model.safetensors");
    let bytes = std::fs::read(&st).expect("read");
    std::fs::write(&st, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = load_model(&model, candle_core::DType::F32, &candle_core::Device::Cpu)
        .expect_err("truncated")
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn bad_train_settings_name_the_field() {
    for (cfg, field) in [
        (
            TrainConfig {
                lr: 0.0,
                ..Default::default()
            },
            "lr",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..Default::default()
            },
            "batch_size",
        ),
        (
            TrainConfig {
                max_steps: Some(0),
                ..Default::default()
            },
            "max_steps",
        ),
    ] {
        let err = cfg.validate().expect_err("invalid").to_string();
        assert!(err.contains(field), "{err}");
    }
}
