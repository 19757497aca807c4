//! Parameter counts printed exactly as PEFT prints them.

use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::peft::{MethodConfig, MethodKind, TargetModules};
use peft_studio_engine::plan::count_params;

use crate::common::lora_method;

const LLAMA2_7B: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,
 "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32000,
 "tie_word_embeddings":false,"rms_norm_eps":1e-5,"model_type":"llama"}"#;

const QWEN2_05B: &str = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":896,"intermediate_size":4864,
 "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,
 "tie_word_embeddings":true,"model_type":"qwen2","rope_theta":1000000.0}"#;

const SMOLLM2_135M: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
 "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
 "tie_word_embeddings":true,"model_type":"llama","rope_theta":100000}"#;

fn line(config: &str, method: &MethodConfig) -> String {
    count_params(&LlamaConfig::from_json(config).expect("config"), method)
        .expect("count")
        .to_string()
}

#[test]
fn llama2_7b_lora_q_v_matches_peft() {
    assert_eq!(
        line(LLAMA2_7B, &lora_method(8, "q_proj,v_proj")),
        "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
    );
}

#[test]
fn tied_embeddings_count_once() {
    // SmolLM2-135M has 134,515,008 parameters with its tied embedding counted once.
    let full = MethodConfig {
        kind: MethodKind::Full,
        ..Default::default()
    };
    assert_eq!(
        line(SMOLLM2_135M, &full),
        "trainable params: 134,515,008 || all params: 134,515,008 || trainable%: 100.0000"
    );
    assert_eq!(
        line(SMOLLM2_135M, &lora_method(8, "q_proj,v_proj")),
        "trainable params: 460,800 || all params: 134,975,808 || trainable%: 0.3414"
    );
}

#[test]
fn qwen2_biases_are_counted() {
    // Qwen2-0.5B: 494,032,768 parameters including q/k/v biases, tied embeddings once.
    assert_eq!(
        line(QWEN2_05B, &lora_method(8, "q_proj,v_proj")),
        "trainable params: 540,672 || all params: 494,573,440 || trainable%: 0.1093"
    );
}

#[test]
fn layers_to_transform_and_all_linear() {
    let mut m = lora_method(8, "all-linear");
    m.layers_to_transform = Some((0..16).collect());
    // all-linear skips lm_head; per layer r·(in+out) over the 7 projections.
    let per_layer = 8 * ((4096 + 4096) * 4 + (4096 + 11008) * 2 + (11008 + 4096));
    let want = 16 * per_layer;
    let counts = count_params(&LlamaConfig::from_json(LLAMA2_7B).expect("c"), &m).expect("count");
    assert_eq!(counts.trainable, want as u64);
}

#[test]
fn freeze_counts_the_trained_modules() {
    let m = MethodConfig {
        kind: MethodKind::Freeze,
        trainable_modules: vec!["lm_head".into()],
        ..Default::default()
    };
    let counts = count_params(&LlamaConfig::from_json(LLAMA2_7B).expect("c"), &m).expect("count");
    assert_eq!(counts.trainable, 32000 * 4096);
    assert_eq!(counts.total, 6_738_415_616);
}

/// DoRA adds one magnitude per output row of each wrapped layer (PEFT 0.21's own lines).
#[test]
fn dora_counts_match_peft() {
    let dora = |r, targets| {
        let mut m = lora_method(r, targets);
        m.lora_alpha = 16.0;
        m.use_dora = true;
        m
    };
    for (config, targets, want) in [
        (
            LLAMA2_7B,
            "q_proj,v_proj",
            "trainable params: 4,456,448 || all params: 6,742,872,064 || trainable%: 0.0661",
        ),
        (
            LLAMA2_7B,
            "all-linear",
            "trainable params: 21,348,352 || all params: 6,759,763,968 || trainable%: 0.3158",
        ),
        (
            SMOLLM2_135M,
            "q_proj,v_proj",
            "trainable params: 483,840 || all params: 134,998,848 || trainable%: 0.3584",
        ),
        (
            SMOLLM2_135M,
            "all-linear",
            "trainable params: 2,597,760 || all params: 137,112,768 || trainable%: 1.8946",
        ),
    ] {
        assert_eq!(line(config, &dora(8, targets)), want, "{targets}");
    }
}

/// IA3: one scale per output of each target, per input of each feed-forward target (PEFT
/// 0.21's own lines; the defaults are PEFT's k_proj, v_proj, down_proj with down_proj
/// feed-forward).
#[test]
fn ia3_counts_match_peft() {
    let ia3 = |targets: Option<&str>, ff: Option<&str>| MethodConfig {
        kind: MethodKind::Ia3,
        target_modules: targets.map(TargetModules::parse_cli),
        feedforward_modules: ff.map(TargetModules::parse_cli),
        ..MethodConfig::default()
    };
    let other = ia3(
        Some("q_proj,o_proj,gate_proj,up_proj"),
        Some("gate_proj,up_proj"),
    );
    for (config, method, want) in [
        (
            LLAMA2_7B,
            ia3(None, None),
            "trainable params: 614,400 || all params: 6,739,030,016 || trainable%: 0.0091",
        ),
        (
            LLAMA2_7B,
            other.clone(),
            "trainable params: 524,288 || all params: 6,738,939,904 || trainable%: 0.0078",
        ),
        (
            SMOLLM2_135M,
            ia3(None, None),
            "trainable params: 57,600 || all params: 134,572,608 || trainable%: 0.0428",
        ),
        (
            SMOLLM2_135M,
            other,
            "trainable params: 69,120 || all params: 134,584,128 || trainable%: 0.0514",
        ),
    ] {
        assert_eq!(line(config, &method), want);
    }
    // Feed-forward modules must be targets, as PEFT requires.
    let bad = ia3(Some("k_proj,v_proj"), Some("down_proj"));
    let err = count_params(&LlamaConfig::from_json(LLAMA2_7B).expect("config"), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("feedforward_modules") && err.contains("down_proj"),
        "{err}"
    );
}

/// Prompt tuning trains num_virtual_tokens × hidden (PEFT 0.21's own lines).
#[test]
fn prompt_tuning_counts_match_peft() {
    let prompt = |tokens| MethodConfig {
        kind: MethodKind::PromptTuning,
        num_virtual_tokens: tokens,
        ..MethodConfig::default()
    };
    for (config, tokens, want) in [
        (
            LLAMA2_7B,
            20,
            "trainable params: 81,920 || all params: 6,738,497,536 || trainable%: 0.0012",
        ),
        (
            LLAMA2_7B,
            8,
            "trainable params: 32,768 || all params: 6,738,448,384 || trainable%: 0.0005",
        ),
        (
            SMOLLM2_135M,
            20,
            "trainable params: 11,520 || all params: 134,526,528 || trainable%: 0.0086",
        ),
        (
            SMOLLM2_135M,
            8,
            "trainable params: 4,608 || all params: 134,519,616 || trainable%: 0.0034",
        ),
    ] {
        assert_eq!(line(config, &prompt(tokens)), want);
    }
    assert!(count_params(
        &LlamaConfig::from_json(LLAMA2_7B).expect("config"),
        &prompt(0)
    )
    .is_err());
}

/// Prefix tuning trains num_virtual_tokens × layers × 2 × kv_heads·head_dim (PEFT 0.21's own
/// lines; SmolLM2 has grouped-query attention, so its prefix is a third of the hidden size).
#[test]
fn prefix_tuning_counts_match_peft() {
    let prefix = |tokens| MethodConfig {
        kind: MethodKind::PrefixTuning,
        num_virtual_tokens: tokens,
        ..MethodConfig::default()
    };
    for (config, tokens, want) in [
        (
            LLAMA2_7B,
            20,
            "trainable params: 5,242,880 || all params: 6,743,658,496 || trainable%: 0.0777",
        ),
        (
            LLAMA2_7B,
            8,
            "trainable params: 2,097,152 || all params: 6,740,512,768 || trainable%: 0.0311",
        ),
        (
            SMOLLM2_135M,
            20,
            "trainable params: 230,400 || all params: 134,745,408 || trainable%: 0.1710",
        ),
        (
            SMOLLM2_135M,
            8,
            "trainable params: 92,160 || all params: 134,607,168 || trainable%: 0.0685",
        ),
    ] {
        assert_eq!(line(config, &prefix(tokens)), want);
    }
}

/// Houlsby and Pfeiffer adapters (reduction factor 16) count as the adapters library counts
/// them (its own figures, written by bottleneck_adapters.py into counts.json).
#[test]
fn bottleneck_counts_match_the_adapters_library() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/reference/adapters/counts.json"),
        )
        .expect("counts.json"),
    )
    .expect("json");
    for (model, config) in [("llama2_7b", LLAMA2_7B), ("smollm2_135m", SMOLLM2_135M)] {
        for (name, kind) in [
            ("houlsby", MethodKind::Houlsby),
            ("pfeiffer", MethodKind::Pfeiffer),
        ] {
            let method = MethodConfig {
                kind,
                ..MethodConfig::default()
            };
            let got = count_params(&LlamaConfig::from_json(config).expect("config"), &method)
                .expect("count");
            let want = &counts[format!("{model}_{name}")];
            assert_eq!(
                (got.trainable, got.total),
                (want[0].as_u64().expect("t"), want[1].as_u64().expect("a")),
                "{model} {name}"
            );
        }
    }
}

/// The memory estimate has the parts training has: full fine-tuning pays gradients and two
/// moments for every weight, LoRA for its adapters only; activations grow with the batch and
/// faster than linearly with the sequence (attention scores); virtual tokens cost activations.
#[test]
fn memory_estimate_parts() {
    // The planner predicts the path this process runs; these figures are the default's.
    if peft_studio_engine::model::fused::kernels() != peft_studio_engine::model::fused::Kernels::Cpu
    {
        return;
    }
    use candle_core::DType;
    use peft_studio_engine::memory::{estimate, StepShape};
    let cfg = LlamaConfig::from_json(SMOLLM2_135M).expect("config");
    let shape = |batch, seq_len| StepShape {
        batch,
        seq_len,
        dtype: DType::F32,
        cpu: true,
        checkpointing: false,
        quantized: None,
    };
    let lora = lora_method(8, "q_proj,k_proj,v_proj,o_proj");
    let full = MethodConfig {
        kind: MethodKind::Full,
        ..Default::default()
    };
    let l = estimate(&cfg, &lora, shape(4, 256)).expect("lora");
    let f = estimate(&cfg, &full, shape(4, 256)).expect("full");
    assert_eq!(f.optimizer, 134_515_008 * 16);
    assert_eq!(l.optimizer, 921_600 * 16);
    assert_eq!(f.weights, 134_515_008 * 4);
    assert!(l.total() < f.total());
    let double_batch = estimate(&cfg, &lora, shape(8, 256)).expect("b8");
    assert!(double_batch.activations > 19 * l.activations / 10);
    // The fused kernels keep no attention scores: tokens cost the same whether they come
    // as examples or as length. The GPU's generic layer holds one block of scores at a time,
    // for every method: a bottleneck adapter keeps little more than LoRA (its sublayers'
    // outputs), and checkpointing cuts what it keeps too.
    let double_seq = estimate(&cfg, &lora, shape(4, 512)).expect("t512");
    assert_eq!(double_seq.activations, double_batch.activations);
    let gpu = |method: &MethodConfig, batch, seq_len| {
        let s = StepShape {
            cpu: false,
            ..shape(batch, seq_len)
        };
        estimate(&cfg, method, s).expect("gpu")
    };
    let houlsby = MethodConfig {
        kind: MethodKind::Houlsby,
        reduction_factor: 16,
        ..Default::default()
    };
    let (h, lo) = (gpu(&houlsby, 4, 512), gpu(&lora, 4, 512));
    assert!(h.activations > lo.activations && h.activations < 5 * lo.activations / 4);
    assert!(gpu(&houlsby, 4, 512).activations > gpu(&houlsby, 8, 256).activations);
    for method in [&houlsby, &full] {
        let checkpointed = StepShape {
            cpu: false,
            checkpointing: true,
            ..shape(4, 512)
        };
        let c = estimate(&cfg, method, checkpointed).expect("checkpointed");
        assert!(c.activations < gpu(method, 4, 512).activations / 2);
        // On the CPU the generic layer takes the layers the fused one cannot serve when
        // checkpointing is asked for, which the single fused ops would ignore.
        let cpu = estimate(&cfg, method, shape(4, 512)).expect("cpu");
        let cpu_checkpointed = StepShape {
            checkpointing: true,
            ..shape(4, 512)
        };
        let c = estimate(&cfg, method, cpu_checkpointed).expect("cpu checkpointed");
        assert!(c.activations < cpu.activations / 2);
    }
    assert!(gpu(&lora, 4, 256).on_gpu() && !l.on_gpu());
    let prompt = MethodConfig {
        kind: MethodKind::PromptTuning,
        num_virtual_tokens: 64,
        ..Default::default()
    };
    let p = estimate(&cfg, &prompt, shape(4, 256)).expect("prompt");
    let plain = MethodConfig {
        kind: MethodKind::Freeze,
        trainable_modules: vec!["model.norm".into()],
        ..Default::default()
    };
    let n = estimate(&cfg, &plain, shape(4, 256)).expect("freeze");
    assert!(p.activations > n.activations);
    assert!(l.to_string().starts_with("estimated peak memory: "));
    // Checkpointing keeps one [tokens, hidden] tensor per layer instead of ~10k floats/token.
    let long = |checkpointing| {
        let s = StepShape {
            checkpointing,
            ..shape(4, 2048)
        };
        estimate(&cfg, &lora, s).expect("long")
    };
    assert!(long(true).activations * 4 < long(false).activations);
    let bf16 = estimate(
        &cfg,
        &lora,
        StepShape {
            dtype: DType::BF16,
            ..shape(4, 256)
        },
    );
    let bf16 = bf16.expect("bf16");
    assert!(bf16.weights < l.weights);
    // On the CPU the fused kernels serve bf16 too: less than f32 in all.
    assert!(bf16.total() < l.total());
}

/// The GPU path's planner on Llama-2-7B (config only), LoRA r=16 on every linear layer,
/// bf16, 1 × 2,048 tokens: within a 24 GB card with gradient checkpointing, within 40 GiB
/// without; `gpu_fit` names checkpointing as the change that makes it fit 24 GB.
#[test]
fn a_7b_model_at_2048_tokens_fits_a_24_gb_gpu_with_checkpointing() {
    // The planner predicts the path this process runs; these figures are the default's.
    if peft_studio_engine::model::fused::kernels() != peft_studio_engine::model::fused::Kernels::Cpu
    {
        return;
    }
    use candle_core::DType;
    use peft_studio_engine::memory::{estimate, gpu_fit, StepShape};
    let cfg = LlamaConfig::from_json(LLAMA2_7B).expect("config");
    let lora = lora_method(16, "all-linear");
    let step = |checkpointing| StepShape {
        batch: 1,
        seq_len: 2048,
        dtype: DType::BF16,
        cpu: false,
        checkpointing,
        quantized: None,
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let with = estimate(&cfg, &lora, step(true)).expect("checkpointing");
    let without = estimate(&cfg, &lora, step(false)).expect("no checkpointing");
    assert!(gib(with.total()) <= 24.0, "{with}");
    assert!(gib(without.total()) <= 40.0, "{without}");
    assert_eq!(lora.lora_targets(&cfg).expect("targets").len(), 7 * 32);
    // At 4,096 tokens without checkpointing it does not fit 24 GB; checkpointing is the fix.
    let long = StepShape {
        seq_len: 4096,
        ..step(false)
    };
    let fit = gpu_fit(&cfg, &lora, long).expect("fit");
    assert!(
        fit.contains("24 GB: does not fit; fits with gradient checkpointing"),
        "{fit}"
    );
    assert!(fit.contains("80 GB: fits"), "{fit}");
}
