//! The job bundle: a folder that holds everything another trainer needs to train a run as
//! the studio would — the tokens, the order of every micro-batch, the initial adapter, the
//! settings, the accelerate (and DeepSpeed / FSDP) config and the Python entry point. Layout
//! and formats: docs/HANDOFF.md.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::target::{JobDevice, Strategy, TargetConfig};
use crate::data::Examples;
use crate::error::{EngineError, Result};
use crate::fsutil::write_atomic;
use crate::run_folder::RunConfig;

/// The entry point accelerate launches.
pub const ENTRY_POINT: &str = "train.py";
/// The script that reports the job Python's package versions.
pub const CHECK_SCRIPT: &str = "check_env.py";
/// The accelerate config (JSON: accelerate reads a `.json` config file as JSON).
pub const ACCELERATE_CONFIG: &str = "accelerate.json";
/// The script that starts the job (what the studio runs, and a person by hand).
pub const LAUNCH_SCRIPT: &str = "launch.sh";
/// The Slurm batch script that runs the launch script on one node.
pub const SBATCH_SCRIPT: &str = "job.sbatch";
/// The script that submits the batch script and prints the job's output until it ends.
pub const SUBMIT_SCRIPT: &str = "submit.sh";
/// The file whose appearance asks the job to stop after its current step.
pub const STOP_FILE: &str = "STOP";

/// The packages the entry point imports, with the oldest version it is written for.
pub const REQUIRES: [(&str, &str); 4] = [
    ("torch", "2.4"),
    ("transformers", "4.56"),
    ("peft", "0.17"),
    ("accelerate", "1.0"),
];

/// A run's bundle folder, `<run>/job`.
pub fn bundle_dir(run_out: &Path) -> PathBuf {
    run_out.join("job")
}

/// Where the job writes: its event log, checkpoints and final adapter.
pub fn job_out(bundle: &Path) -> PathBuf {
    bundle.join("out")
}

/// The packages a target's job needs: [`REQUIRES`], and DeepSpeed for its strategies.
pub fn requirements(target: &TargetConfig) -> Vec<(&'static str, &'static str)> {
    let mut all = REQUIRES.to_vec();
    if target.strategy.zero_stage().is_some() {
        all.push(("deepspeed", "0.15"));
    }
    all
}

/// What a bundle starts from: the run's examples and its method's initial values.
pub struct Start {
    /// Training examples.
    pub train: Examples,
    /// Validation examples.
    pub val: Option<Examples>,
    /// The trainable tensors before training, by their names in the studio.
    pub initial: Vec<(String, candle_core::Tensor)>,
}

/// Writes the bundle of `cfg` into `dir` from its start; the model itself is named by its
/// path (the job loads it there).
pub fn write(cfg: &RunConfig, start: &Start, dir: &Path) -> Result<()> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| EngineError::io(&data, e))?;
    let train = &start.train;
    write_examples(&data.join("train.jsonl"), train)?;
    if let Some(val) = &start.val {
        write_examples(&data.join("val.jsonl"), val)?;
    }
    let total = cfg.train.total_steps(train.batches_per_epoch());
    write_lines(
        &data.join("order.jsonl"),
        (0..total * cfg.train.grad_accum).map(|i| json!(train.members_of(i))),
    )?;
    crate::run::export_params(cfg, &start.initial, None, &dir.join("initial_adapter"))?;
    write_json(&dir.join("job.json"), &job_spec(cfg, train, total)?)?;
    write_json(
        &dir.join(ACCELERATE_CONFIG),
        &accelerate_config(&cfg.target, cfg),
    )?;
    write_atomic(&dir.join(ENTRY_POINT), include_str!("train.py").as_bytes())?;
    write_atomic(
        &dir.join(CHECK_SCRIPT),
        include_str!("check_env.py").as_bytes(),
    )?;
    write_atomic(
        &dir.join(LAUNCH_SCRIPT),
        include_str!("launch.sh").as_bytes(),
    )?;
    write_atomic(
        &dir.join(SBATCH_SCRIPT),
        sbatch_script(&cfg.target).as_bytes(),
    )?;
    write_atomic(
        &dir.join(SUBMIT_SCRIPT),
        include_str!("submit.sh").as_bytes(),
    )?;
    let requirements: String = requirements(&cfg.target)
        .iter()
        .map(|(name, version)| format!("{name}>={version}\n"))
        .collect();
    write_atomic(&dir.join("requirements.txt"), requirements.as_bytes())
}

/// `job.json`: what the entry point reads besides the data.
fn job_spec(cfg: &RunConfig, train: &Examples, total: usize) -> Result<Value> {
    let model = std::fs::canonicalize(&cfg.model).map_err(|e| EngineError::io(&cfg.model, e))?;
    let t = &cfg.train;
    Ok(json!({
        "model": model.display().to_string(),
        "device": match cfg.target.device { JobDevice::Gpu => "gpu", JobDevice::Cpu => "cpu" },
        "precision": t.precision.to_string(),
        "strategy": cfg.target.strategy.as_str(),
        "total_steps": total,
        "batches_per_epoch": train.batches_per_epoch(),
        "dropped_examples": train.dropped(),
        "truncated_examples": train.truncated(),
        // Every step's learning rate, so that the schedule is computed once, here.
        "lr": (0..total).map(|s| t.lr_at(s, total)).collect::<Vec<f64>>(),
        "train": {
            "lr": t.lr, "beta1": t.beta1, "beta2": t.beta2, "eps": t.eps,
            "weight_decay": t.weight_decay, "batch_size": t.batch_size,
            "grad_accum": t.grad_accum, "max_grad_norm": t.max_grad_norm, "seed": t.seed,
            "eval_every": t.eval_every, "checkpoint_every": t.checkpoint_every,
            "keep_checkpoints": t.keep_checkpoints,
            "gradient_checkpointing": t.gradient_checkpointing,
        },
    }))
}

/// The accelerate config of a target: processes, mixed precision and the distributed type,
/// with DeepSpeed's or FSDP's settings (PEFT's documented LoRA settings for both).
pub fn accelerate_config(target: &TargetConfig, cfg: &RunConfig) -> Value {
    let mixed = match cfg.train.precision {
        crate::train::Precision::F32 => "no",
        crate::train::Precision::Bf16 => "bf16",
    };
    let multi = target.processes > 1;
    let mut config = json!({
        "compute_environment": "LOCAL_MACHINE",
        // CPU processes too: accelerate's multi-GPU launcher (torch.distributed.run) starts
        // them, and the entry point's `Accelerator(cpu=True)` joins them with gloo; its
        // MULTI_CPU type would launch through mpirun.
        "distributed_type": if multi { "MULTI_GPU" } else { "NO" },
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": target.processes,
        "mixed_precision": mixed,
        "use_cpu": false,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": true,
    });
    if let Some(stage) = target.strategy.zero_stage() {
        config["distributed_type"] = json!("DEEPSPEED");
        config["deepspeed_config"] = json!({
            "zero_stage": stage,
            "gradient_accumulation_steps": cfg.train.grad_accum / target.processes.max(1),
            "gradient_clipping": cfg.train.max_grad_norm,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
        });
    } else if target.strategy == Strategy::Fsdp {
        // Loading on rank 0 alone and broadcasting the weights needs GPUs (FSDP refuses
        // `sync_module_states` on the CPU); CPU processes each load the model.
        let on_gpus = target.device == JobDevice::Gpu;
        config["distributed_type"] = json!("FSDP");
        config["fsdp_config"] = json!({
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_cpu_ram_efficient_loading": on_gpus,
            "fsdp_forward_prefetch": false,
            "fsdp_offload_params": false,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_sync_module_states": on_gpus,
            "fsdp_use_orig_params": false,
        });
    }
    config
}

/// `job.sbatch`: one node, the target's GPUs (or CPU cores), the launch script from the folder
/// it is submitted in (`cd BUNDLE && sbatch job.sbatch`).
pub fn sbatch_script(target: &TargetConfig) -> String {
    let n = target.processes;
    let mut lines = vec![
        "#!/bin/sh".to_string(),
        "#SBATCH --job-name=peft-studio".into(),
        "#SBATCH --nodes=1".into(),
        "#SBATCH --ntasks=1".into(),
        match target.device {
            JobDevice::Gpu => format!("#SBATCH --gpus={n}"),
            JobDevice::Cpu => format!("#SBATCH --cpus-per-task={n}"),
        },
        "#SBATCH --output=slurm.log".into(),
    ];
    lines.extend(
        target
            .partition
            .iter()
            .map(|p| format!("#SBATCH --partition={p}")),
    );
    lines.extend(
        target
            .time_limit
            .iter()
            .map(|t| format!("#SBATCH --time={t}")),
    );
    lines.push(format!(
        "cd \"${{SLURM_SUBMIT_DIR:-.}}\" && PYTHON=\"${{PYTHON:-{}}}\" exec sh ./{LAUNCH_SCRIPT} \"$@\"",
        target.python
    ));
    lines.join("\n") + "\n"
}

fn write_examples(path: &Path, examples: &Examples) -> Result<()> {
    write_lines(
        path,
        examples
            .iter()
            .map(|e| json!({"ids": e.ids, "mask": e.loss_mask})),
    )
}

/// One JSON value a line, streamed (a large dataset's tokens are not held twice).
fn write_lines(path: &Path, lines: impl Iterator<Item = Value>) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    for line in lines {
        writeln!(out, "{line}").map_err(|e| EngineError::io(path, e))?;
    }
    out.flush().map_err(|e| EngineError::io(path, e))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| EngineError::config("job bundle", e.to_string()))?;
    write_atomic(path, &text)
}
