//! Resume is exact: N steps + resume + N steps equals 2N steps straight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::run::{self, RunConfig};
use peft_studio_engine::train::{
    Precision, Recorder, Schedule, TrainConfig, TrainEvent, TrainSink,
};

use crate::common::{lora_method, memorisable_dataset, run_config, tiny_model};

/// Records events and asks for a cancel once `stop_after` steps are done.
struct StopAfter {
    rec: Recorder,
    stop_after: usize,
    cancel: Arc<AtomicBool>,
}

impl TrainSink for StopAfter {
    fn event(&mut self, e: &TrainEvent) {
        if let TrainEvent::Step(m) = e {
            if m.step == self.stop_after {
                self.cancel.store(true, Ordering::Relaxed);
            }
        }
        self.rec.event(e);
    }
}

fn config(dir: &std::path::Path, name: &str, precision: Precision) -> RunConfig {
    let model = tiny_model(dir, &TinySpec::default());
    let data = memorisable_dataset(dir);
    let train = TrainConfig {
        max_steps: Some(8),
        batch_size: 1,
        grad_accum: 2,
        lr: 5e-3,
        schedule: Schedule::Cosine,
        warmup_steps: 2,
        weight_decay: 0.01,
        val_fraction: 0.25,
        precision,
        ..Default::default()
    };
    let mut method = lora_method(4, "all-linear");
    method.lora_dropout = 0.1;
    let mut cfg = run_config(dir, model, data, method, train);
    cfg.out = dir.join(name);
    cfg
}

fn adapter_tensors(cfg: &RunConfig) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(
        cfg.adapter_dir().join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("adapter");
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().expect("f").to_vec1().expect("v")))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn resumed_run_matches_a_straight_run() {
    resume_matches_straight(Precision::F32);
}

/// In mixed precision the checkpoint holds the optimiser's f32 values, not the model's bf16
/// rounding of them, so a resumed run continues exactly too.
#[test]
fn resumed_bf16_run_matches_a_straight_run() {
    resume_matches_straight(Precision::Bf16);
}

fn resume_matches_straight(precision: Precision) {
    let dir = tempfile::tempdir().expect("tempdir");
    let straight = config(dir.path(), "straight", precision);
    let mut rec = Recorder::default();
    run::train(&straight, false, &mut rec, &AtomicBool::new(false)).expect("straight run");
    let want = rec.losses();
    assert_eq!(want.len(), 8);

    let split = config(dir.path(), "split", precision);
    let cancel = Arc::new(AtomicBool::new(false));
    let mut first = StopAfter {
        rec: Recorder::default(),
        stop_after: 4,
        cancel: cancel.clone(),
    };
    let stopped = run::train(&split, false, &mut first, &cancel);
    assert!(
        matches!(stopped, Err(peft_studio_engine::EngineError::Cancelled)),
        "first half ends cancelled"
    );
    let mut second = Recorder::default();
    run::train(&split, true, &mut second, &AtomicBool::new(false)).expect("resumed run");
    let mut got = first.rec.losses();
    got.extend(second.losses());
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "step {}: straight {a} vs resumed {b}",
            i + 1
        );
    }
    for ((na, a), (nb, b)) in adapter_tensors(&straight)
        .iter()
        .zip(&adapter_tensors(&split))
    {
        assert_eq!(na, nb);
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-6, "{na} differs by {diff}");
    }
}

#[test]
fn corrupt_checkpoint_is_reported_with_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "run", Precision::F32);
    let cancel = Arc::new(AtomicBool::new(false));
    let mut sink = StopAfter {
        rec: Recorder::default(),
        stop_after: 2,
        cancel: cancel.clone(),
    };
    let _ = run::train(&cfg, false, &mut sink, &cancel);
    let (_, latest) = peft_studio_engine::train::checkpoint::list(&cfg.checkpoints_dir())
        .pop()
        .expect("a checkpoint");
    std::fs::write(latest.join("params.safetensors"), b"not safetensors").expect("corrupt");
    let err = run::train(
        &cfg,
        true,
        &mut Recorder::default(),
        &AtomicBool::new(false),
    )
    .expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.contains("params.safetensors"), "{msg}");
}
