//! Where a run trains: `[target]` of a run config. `local` is the studio's own engine on this
//! machine; the others hand the run to Hugging Face accelerate (transformers + PEFT) as a job.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The trainer a run is handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The studio's engine, in its worker on this machine.
    #[default]
    Local,
    /// `accelerate launch` on this machine (several processes or GPUs).
    Accelerate,
    /// `accelerate launch` on another machine over ssh.
    Ssh,
    /// An `sbatch` job on a Slurm cluster.
    Slurm,
}

impl TargetKind {
    /// The name `[target] kind` and `--target` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Accelerate => "accelerate",
            Self::Ssh => "ssh",
            Self::Slurm => "slurm",
        }
    }
}

/// How the processes of a job share the model (accelerate's distributed types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Each process holds the whole model; gradients are averaged (DistributedDataParallel).
    #[default]
    Ddp,
    /// Parameters, gradients and optimiser state sharded (PyTorch FSDP).
    Fsdp,
    /// DeepSpeed ZeRO stage 2: gradients and optimiser state sharded.
    Zero2,
    /// DeepSpeed ZeRO stage 3: parameters sharded too.
    Zero3,
}

impl Strategy {
    /// The name `[target] strategy` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ddp => "ddp",
            Self::Fsdp => "fsdp",
            Self::Zero2 => "zero2",
            Self::Zero3 => "zero3",
        }
    }

    /// The DeepSpeed ZeRO stage, for the two strategies that are DeepSpeed's.
    pub fn zero_stage(self) -> Option<u8> {
        match self {
            Self::Zero2 => Some(2),
            Self::Zero3 => Some(3),
            _ => None,
        }
    }
}

/// What each process of a job computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JobDevice {
    /// One GPU per process (NCCL between them).
    #[default]
    Gpu,
    /// CPU processes (gloo between them): for trying a job out, and for tests.
    Cpu,
}

/// `[target]` of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// Which trainer runs the job.
    pub kind: TargetKind,
    /// Processes (one per GPU) on the machine that runs the job.
    pub processes: usize,
    /// GPUs or CPU processes.
    pub device: JobDevice,
    /// How the processes share the model.
    pub strategy: Strategy,
    /// The Python that has torch, transformers, PEFT and accelerate (on the job's machine).
    pub python: String,
    /// `ssh`: the machine, as ssh takes it (`user@host`, or a name from `~/.ssh/config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `ssh`: more arguments for ssh (a port, a key, `-F CONFIG`), before the host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_options: Vec<String>,
    /// `ssh`: the folder on that machine the job's bundles are copied into
    /// (`peft-studio-jobs` in the home folder when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_dir: Option<String>,
    /// `ssh`: the base model's folder on that machine; unset, the model is sent with the bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_model: Option<String>,
    /// `slurm`: the partition to submit to (the cluster's default when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `slurm`: the job's time limit as sbatch takes it (`HH:MM:SS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            kind: TargetKind::Local,
            processes: 1,
            device: JobDevice::Gpu,
            strategy: Strategy::Ddp,
            python: "python3".into(),
            host: None,
            ssh_options: Vec::new(),
            remote_dir: None,
            remote_model: None,
            partition: None,
            time_limit: None,
        }
    }
}

impl TargetConfig {
    /// Whether the run trains in the studio's own engine (then `[target]` is not written).
    pub fn is_local(&self) -> bool {
        self.kind == TargetKind::Local
    }

    /// Rejects settings the job cannot run with, naming the field.
    pub fn validate(&self) -> Result<()> {
        let field = |name: &str| format!("target.{name}");
        if self.processes == 0 {
            return Err(EngineError::config(
                field("processes"),
                "must be at least 1",
            ));
        }
        if self.python.trim().is_empty() {
            return Err(EngineError::config(field("python"), "names no Python"));
        }
        if self.device == JobDevice::Cpu && self.strategy == Strategy::Fsdp {
            return Err(EngineError::config(
                field("strategy"),
                "`fsdp` shards the model across GPUs; CPU processes train with ddp, zero2 or zero3",
            ));
        }
        match self.kind {
            TargetKind::Ssh if self.host.as_deref().is_none_or(str::is_empty) => Err(
                EngineError::config(field("host"), "an ssh target needs the machine's name"),
            ),
            TargetKind::Local | TargetKind::Accelerate | TargetKind::Ssh | TargetKind::Slurm => {
                Ok(())
            }
        }
    }

    /// A short description for the run list's device column, e.g. `accelerate 2×cpu ddp`:
    /// runs on one target queue behind each other, as local runs do on their device.
    pub fn describe(&self) -> String {
        let device = match self.device {
            JobDevice::Gpu => "gpu",
            JobDevice::Cpu => "cpu",
        };
        let place = match (self.kind, &self.host) {
            (TargetKind::Ssh, Some(host)) => format!("ssh {host}"),
            (kind, _) => kind.as_str().to_string(),
        };
        format!(
            "{place} {}×{device} {}",
            self.processes,
            self.strategy.as_str()
        )
    }

    /// Reads `--target`: `local`, `accelerate`, `slurm` or `ssh:HOST`.
    pub fn parse_kind(&mut self, text: &str) -> Result<()> {
        let (kind, host) = match text.split_once(':') {
            Some(("ssh", host)) => (TargetKind::Ssh, Some(host.to_string())),
            _ => (
                match text {
                    "local" => TargetKind::Local,
                    "accelerate" => TargetKind::Accelerate,
                    "slurm" => TargetKind::Slurm,
                    other => {
                        return Err(EngineError::config(
                            "target",
                            format!("`{other}` is not one of local, accelerate, slurm, ssh:HOST"),
                        ))
                    }
                },
                None,
            ),
        };
        self.kind = kind;
        if host.is_some() {
            self.host = host;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_check_their_fields() {
        let mut t = TargetConfig::default();
        assert!(t.is_local());
        t.parse_kind("ssh:me@box").unwrap();
        assert_eq!(
            (t.kind, t.host.as_deref()),
            (TargetKind::Ssh, Some("me@box"))
        );
        t.validate().unwrap();
        assert!(t
            .parse_kind("cluster")
            .unwrap_err()
            .to_string()
            .contains("`cluster`"));
        let cpu_fsdp = TargetConfig {
            kind: TargetKind::Accelerate,
            device: JobDevice::Cpu,
            strategy: Strategy::Fsdp,
            ..Default::default()
        };
        assert!(cpu_fsdp
            .validate()
            .unwrap_err()
            .to_string()
            .contains("target.strategy"));
        let none = TargetConfig {
            processes: 0,
            ..Default::default()
        };
        assert!(none
            .validate()
            .unwrap_err()
            .to_string()
            .contains("target.processes"));
    }
}
