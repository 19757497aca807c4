//! The hand-off's bundle and checks (docs/HANDOFF.md): what the job reads is what the studio
//! trains, and what a job cannot train as the studio is refused by field before a run exists.
//! The job itself runs in `tests/handoff/run`.

use std::io::BufRead;

use peft_studio_engine::data::Examples;
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::handoff::{self, bundle, JobDevice, Strategy, TargetConfig, TargetKind};
use peft_studio_engine::peft::MethodKind;
use peft_studio_engine::run::RunConfig;
use peft_studio_engine::train::TrainConfig;

use crate::common::*;

fn handoff_config(dir: &std::path::Path) -> RunConfig {
    let model = tiny_model(dir, &TinySpec::default());
    let data = memorisable_dataset(dir);
    let train = TrainConfig {
        max_steps: Some(5),
        batch_size: 1,
        grad_accum: 2,
        val_fraction: 0.25,
        warmup_steps: 2,
        ..Default::default()
    };
    let mut cfg = run_config(dir, model, data, lora_method(4, "q_proj,v_proj"), train);
    cfg.target = TargetConfig {
        kind: TargetKind::Accelerate,
        processes: 2,
        device: JobDevice::Cpu,
        ..Default::default()
    };
    cfg
}

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let file = std::fs::File::open(path).unwrap();
    std::io::BufReader::new(file)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// Every micro-batch of the run, in the order the local trainer takes them, with its rows'
/// tokens and masks; every step's learning rate; the initial adapter in PEFT's format.
#[test]
fn the_bundle_holds_the_run_the_studio_would_train() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = handoff_config(dir.path());
    let job = handoff::write_bundle(&cfg).unwrap();
    let prepared = peft_studio_engine::run::prepare(&cfg).unwrap();
    let train: &Examples = &prepared.train;
    let rows = json_lines(&job.join("data/train.jsonl"));
    assert_eq!(rows.len(), train.len());
    for (row, example) in rows.iter().zip(train.iter()) {
        assert_eq!(row["ids"], serde_json::json!(example.ids));
        assert_eq!(row["mask"], serde_json::json!(example.loss_mask));
    }
    let order = json_lines(&job.join("data/order.jsonl"));
    assert_eq!(order.len(), 5 * 2, "steps × grad_accum micro-batches");
    for (index, members) in order.iter().enumerate() {
        assert_eq!(members, &serde_json::json!(train.members_of(index)));
    }
    assert_eq!(json_lines(&job.join("data/val.jsonl")).len(), 1);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("job.json")).unwrap()).unwrap();
    let lrs: Vec<f64> = (0..5).map(|s| cfg.train.lr_at(s, 5)).collect();
    assert_eq!(spec["lr"], serde_json::json!(lrs));
    assert_eq!(spec["total_steps"], 5);
    let adapter = job.join("initial_adapter");
    assert!(adapter.join("adapter_config.json").exists());
    assert!(adapter.join("adapter_model.safetensors").exists());
    let accelerate: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join(bundle::ACCELERATE_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(accelerate["num_processes"], 2);
    assert_eq!(accelerate["distributed_type"], "MULTI_GPU");
}

/// ZeRO stages and FSDP become accelerate's own config sections; the Slurm script asks for
/// the target's GPUs.
#[test]
fn strategies_become_accelerate_configs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = handoff_config(dir.path());
    cfg.target.device = JobDevice::Gpu;
    cfg.target.strategy = Strategy::Zero3;
    let zero = bundle::accelerate_config(&cfg.target, &cfg);
    assert_eq!(zero["distributed_type"], "DEEPSPEED");
    assert_eq!(zero["deepspeed_config"]["zero_stage"], 3);
    assert_eq!(zero["deepspeed_config"]["gradient_accumulation_steps"], 1);
    cfg.target.strategy = Strategy::Fsdp;
    let fsdp = bundle::accelerate_config(&cfg.target, &cfg);
    assert_eq!(fsdp["distributed_type"], "FSDP");
    assert_eq!(fsdp["fsdp_config"]["fsdp_sync_module_states"], true);
    cfg.target.partition = Some("gpu".into());
    let sbatch = bundle::sbatch_script(&cfg.target);
    assert!(sbatch.contains("#SBATCH --gpus=2") && sbatch.contains("#SBATCH --partition=gpu"));
}

/// What a job cannot train as the studio is refused naming the field.
#[test]
fn what_a_job_cannot_train_is_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = handoff_config(dir.path());
    let refused = |change: &dyn Fn(&mut RunConfig)| {
        let mut cfg = base.clone();
        change(&mut cfg);
        peft_studio_engine::run::preflight(&cfg)
            .and_then(|()| handoff::check(&cfg))
            .unwrap_err()
            .to_string()
    };
    assert!(refused(&|c| c.train.grad_accum = 3).contains("`grad_accum`"));
    assert!(refused(&|c| c.method.kind = MethodKind::Houlsby).contains("`method`"));
    assert!(refused(&|c| c.target.processes = 0).contains("target.processes"));
    assert!(refused(&|c| c.target.strategy = Strategy::Fsdp).contains("target.strategy"));
    peft_studio_engine::run::preflight(&base).unwrap();
    handoff::check(&base).unwrap();
}

/// The bundle's starting point from config.json alone equals the method applied to the loaded
/// model, value for value: a base too large for this machine need not be loaded to hand it off.
#[test]
fn the_start_from_the_config_alone_is_the_loaded_models() {
    use peft_studio_engine::model::{load_model, LlamaConfig};
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(dir.path(), &TinySpec::default());
    let config = LlamaConfig::from_path(&model_dir).unwrap();
    let mut rslora = lora_method(4, "all-linear");
    rslora.use_rslora = true;
    let ia3 = peft_studio_engine::peft::MethodConfig {
        kind: MethodKind::Ia3,
        ..Default::default()
    };
    for method in [lora_method(4, "q_proj,v_proj"), rslora, ia3] {
        for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
            let mut model = load_model(&model_dir, dtype, &candle_core::Device::Cpu).unwrap();
            let applied = method.apply(&mut model, 7).unwrap();
            let start = method.initial_values(&config, 7, dtype).unwrap().unwrap();
            assert_eq!(applied.len(), start.len(), "{:?}", method.kind);
            for ((name, var), (start_name, value)) in applied.iter().zip(&start) {
                assert_eq!(name, start_name);
                let var = var.as_tensor().to_dtype(candle_core::DType::F32).unwrap();
                assert_eq!(max_abs_diff(&var, value), 0.0, "{name} in {dtype:?}");
            }
        }
    }
    let mut dora = lora_method(4, "q_proj");
    dora.use_dora = true;
    assert!(dora
        .initial_values(&config, 7, candle_core::DType::F32)
        .unwrap()
        .is_none());
}
