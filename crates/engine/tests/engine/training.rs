//! Training reduces the loss for LoRA, freezing and full fine-tuning.

use std::sync::atomic::AtomicBool;

use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::peft::{MethodConfig, MethodKind};
use peft_studio_engine::run::{self, prepare};
use peft_studio_engine::train::{Precision, Recorder, Schedule, TrainConfig, Trainer};

use crate::common::{lora_method, memorisable_dataset, run_config, tiny_model};

fn train_losses(method: MethodConfig, lr: f64, steps: usize) -> Vec<f64> {
    train_losses_in(method, lr, steps, Precision::F32)
}

fn train_losses_in(method: MethodConfig, lr: f64, steps: usize, precision: Precision) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(
        dir.path(),
        &TinySpec {
            hidden_size: 64,
            intermediate_size: 128,
            ..Default::default()
        },
    );
    let data = memorisable_dataset(dir.path());
    let train = TrainConfig {
        lr,
        max_steps: Some(steps),
        batch_size: 4,
        seq_len: 64,
        schedule: Schedule::Constant,
        precision,
        ..Default::default()
    };
    let cfg = run_config(dir.path(), model, data, method, train);
    let p = prepare(&cfg).expect("prepare");
    let mut trainer =
        Trainer::new(&p.model, p.trainables, cfg.train.clone(), p.train, p.val).expect("trainer");
    let mut rec = Recorder::default();
    trainer
        .run(&mut rec, &AtomicBool::new(false), None)
        .expect("train");
    rec.losses()
}

/// Clipping reaches the optimiser (as a factor on every gradient): clipped to a norm far
/// below AdamW's epsilon, updates vanish and the loss stays where it was; unclipped, with
/// two micro-batches per step, it falls.
#[test]
fn clipping_and_accumulation_reach_the_optimiser() {
    let losses = |max_grad_norm: f64| {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = tiny_model(dir.path(), &TinySpec::default());
        let data = memorisable_dataset(dir.path());
        let train = TrainConfig {
            lr: 1e-2,
            max_steps: Some(20),
            batch_size: 2,
            grad_accum: 2,
            seq_len: 64,
            max_grad_norm,
            schedule: Schedule::Constant,
            ..Default::default()
        };
        let method = lora_method(8, "q_proj,k_proj,v_proj,o_proj,lm_head");
        let cfg = run_config(dir.path(), model, data, method, train);
        let p = prepare(&cfg).expect("prepare");
        let mut trainer = Trainer::new(&p.model, p.trainables, cfg.train.clone(), p.train, p.val)
            .expect("trainer");
        let mut rec = Recorder::default();
        trainer
            .run(&mut rec, &AtomicBool::new(false), None)
            .expect("train");
        rec.losses()
    };
    let (free, clipped) = (losses(0.0), losses(1e-12));
    let change = |l: &[f64]| (l[l.len() - 1] - l[0]).abs() / l[0];
    eprintln!("unclipped {free:?}\nclipped {clipped:?}");
    assert!(
        change(&free) > 0.2,
        "unclipped, the loss barely moved: {free:?}"
    );
    assert!(
        change(&clipped) < 0.01,
        "clipped to 1e-12, the loss moved: {clipped:?}"
    );
}

fn assert_memorises(kind: &str, losses: &[f64]) {
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    let trace: Vec<String> = losses
        .iter()
        .step_by(10)
        .map(|l| format!("{l:.3}"))
        .collect();
    eprintln!(
        "{kind}: loss {first:.4} -> {last:.4} in {} steps [{}]",
        losses.len(),
        trace.join(" ")
    );
    assert!(
        last < 0.1 * first,
        "{kind}: loss went from {first} to {last}, not below 10%"
    );
}

#[test]
fn lora_memorises_a_small_dataset() {
    assert_memorises(
        "lora",
        // The tiny model's final RMSNorm bounds the logits through a frozen lm_head, so the
        // adapter wraps lm_head too (a target PEFT accepts by name).
        &train_losses(
            lora_method(
                8,
                "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",
            ),
            1e-2,
            150,
        ),
    );
}

/// bf16 mixed precision follows the f32 run: the bf16 weights and activations move the loss
/// a little, the optimiser's f32 values keep every update, and the adapter memorises as in
/// f32.
#[test]
fn bf16_mixed_precision_trains_like_f32() {
    let method = || {
        lora_method(
            8,
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",
        )
    };
    let f32 = train_losses_in(method(), 1e-2, 150, Precision::F32);
    let bf16 = train_losses_in(method(), 1e-2, 150, Precision::Bf16);
    let first = (bf16[0] - f32[0]).abs() / f32[0];
    eprintln!(
        "first loss f32 {} bf16 {} (relative {first:.2e})",
        f32[0], bf16[0]
    );
    assert!(
        first < 0.01,
        "bf16 starts at {} against f32's {}",
        bf16[0],
        f32[0]
    );
    assert_memorises("lora bf16", &bf16);
}

/// Every method trains in bf16 mixed precision: finite losses that fall.
#[test]
fn every_method_trains_in_bf16() {
    let lora = |dora| MethodConfig {
        use_dora: dora,
        ..lora_method(4, "all-linear")
    };
    let with = |kind| MethodConfig {
        kind,
        num_virtual_tokens: 4,
        reduction_factor: 4,
        trainable_last_layers: 1,
        ..MethodConfig::default()
    };
    let methods = [
        lora(false),
        lora(true),
        with(MethodKind::Ia3),
        with(MethodKind::PromptTuning),
        with(MethodKind::PrefixTuning),
        with(MethodKind::Houlsby),
        with(MethodKind::Pfeiffer),
        with(MethodKind::Freeze),
        with(MethodKind::Full),
    ];
    for method in methods {
        let kind = format!(
            "{}{}",
            method.kind,
            if method.use_dora { " (dora)" } else { "" }
        );
        let losses = train_losses_in(method, 1e-2, 8, Precision::Bf16);
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(
            losses.iter().all(|l| l.is_finite()) && last < first,
            "{kind} in bf16: {losses:?}"
        );
    }
}

#[test]
fn dora_memorises_a_small_dataset() {
    let mut method = lora_method(
        8,
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",
    );
    method.use_dora = true;
    assert_memorises("dora", &train_losses(method, 1e-2, 150));
}

/// IA3 trains a few thousand scales: the loss falls, far less than with LoRA.
#[test]
fn ia3_lowers_the_loss() {
    let method = MethodConfig {
        kind: MethodKind::Ia3,
        target_modules: Some(peft_studio_engine::peft::TargetModules::parse_cli(
            "k_proj,v_proj,gate_proj,up_proj,down_proj",
        )),
        feedforward_modules: Some(peft_studio_engine::peft::TargetModules::parse_cli(
            "down_proj",
        )),
        ..MethodConfig::default()
    };
    let losses = train_losses(method, 5e-2, 60);
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.8 * first, "ia3: loss went from {first} to {last}");
}

/// Prompt tuning trains only a few virtual tokens: the loss falls.
#[test]
fn prompt_tuning_lowers_the_loss() {
    let method = MethodConfig {
        kind: MethodKind::PromptTuning,
        num_virtual_tokens: 8,
        ..MethodConfig::default()
    };
    let losses = train_losses(method, 1e-1, 60);
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.8 * first,
        "prompt tuning: loss went from {first} to {last}"
    );
}

/// Prefix tuning trains every layer's extra keys and values: the loss falls.
#[test]
fn prefix_tuning_lowers_the_loss() {
    let method = MethodConfig {
        kind: MethodKind::PrefixTuning,
        num_virtual_tokens: 8,
        ..MethodConfig::default()
    };
    let losses = train_losses(method, 5e-2, 60);
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.8 * first,
        "prefix tuning: loss went from {first} to {last}"
    );
}

/// Houlsby and Pfeiffer adapters lower the loss.
#[test]
fn bottleneck_adapters_lower_the_loss() {
    for kind in [MethodKind::Houlsby, MethodKind::Pfeiffer] {
        let method = MethodConfig {
            kind,
            reduction_factor: 4,
            ..MethodConfig::default()
        };
        let losses = train_losses(method, 1e-2, 60);
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(
            last < 0.8 * first,
            "{kind}: loss went from {first} to {last}"
        );
    }
}

#[test]
fn freeze_memorises_with_trained_lm_head_and_last_layer() {
    let method = MethodConfig {
        kind: MethodKind::Freeze,
        trainable_modules: vec!["lm_head".into()],
        trainable_last_layers: 1,
        ..Default::default()
    };
    assert_memorises("freeze", &train_losses(method, 3e-3, 150));
}

#[test]
fn full_fine_tuning_memorises() {
    let method = MethodConfig {
        kind: MethodKind::Full,
        ..Default::default()
    };
    assert_memorises("full", &train_losses(method, 3e-3, 100));
}

#[test]
fn run_writes_events_checkpoints_and_a_peft_adapter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path(), &TinySpec::default());
    let data = memorisable_dataset(dir.path());
    let train = TrainConfig {
        max_steps: Some(4),
        checkpoint_every: 2,
        batch_size: 2,
        val_fraction: 0.25,
        eval_every: 2,
        ..Default::default()
    };
    let cfg = run_config(
        dir.path(),
        model,
        data,
        lora_method(4, "q_proj,v_proj"),
        train,
    );
    let mut rec = Recorder::default();
    let adapter = run::train(&cfg, false, &mut rec, &AtomicBool::new(false)).expect("train");
    assert!(adapter.join("adapter_model.safetensors").is_file());
    assert!(adapter.join("adapter_config.json").is_file());
    let events = std::fs::read_to_string(cfg.out.join("events.jsonl")).expect("events");
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("\"event\":\"step\""))
            .count(),
        4
    );
    assert!(
        events.lines().any(|l| l.contains("\"event\":\"eval\"")),
        "eval events logged"
    );
    let checkpoints = peft_studio_engine::train::checkpoint::list(&cfg.checkpoints_dir());
    assert_eq!(
        checkpoints.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![2, 4]
    );
    // Starting a fresh run over a folder with checkpoints is refused rather than overwriting it.
    let again = run::train(
        &cfg,
        false,
        &mut Recorder::default(),
        &AtomicBool::new(false),
    );
    assert!(again.is_err());
}
