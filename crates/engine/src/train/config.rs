//! Training hyper-parameters (the `[train]` table of a run config).

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::model::quantized::Quantization;

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Warm up, then hold.
    Constant,
    /// Warm up, then fall linearly to 0 (transformers' default).
    #[default]
    Linear,
    /// Warm up, then follow a half cosine to 0.
    Cosine,
}

/// The number format training computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (on the CPU through the fused kernels).
    #[default]
    F32,
    /// Mixed precision: the model's weights and activations in bf16 (half the memory, bf16
    /// products on GPUs and on CPUs with AVX-512-BF16), norms, softmax and the loss in f32,
    /// and the trained values kept in f32 by the optimiser, which gives the model their
    /// rounding each step. On other CPUs the fused kernels widen bf16 to f32: about f32's
    /// speed, with bf16's memory.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(EngineError::config(
                "precision",
                format!("`{other}` is not one of f32, bf16"),
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// The type the model's weights and activations are held in.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Optimiser, schedule, batching and bookkeeping settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule after warm-up.
    pub schedule: Schedule,
    /// Where the linear and cosine schedules end, as a fraction of `lr` (transformers'
    /// `cosine_with_min_lr`; 0 = they fall to 0).
    pub min_lr_ratio: f64,
    /// Warm-up steps (takes precedence over `warmup_ratio`).
    pub warmup_steps: usize,
    /// Warm-up as a fraction of all steps.
    pub warmup_ratio: f64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one optimiser step.
    pub grad_accum: usize,
    /// Longest sequence in tokens; longer examples are cut.
    pub seq_len: usize,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub max_grad_norm: f64,
    /// Passes over the training set (used when `max_steps` is not set).
    pub epochs: usize,
    /// Stop after this many optimiser steps.
    pub max_steps: Option<usize>,
    /// Seed for data order, dropout and adapter initialisation.
    pub seed: u64,
    /// Fraction of the dataset held out for validation (0 = none).
    pub val_fraction: f64,
    /// Evaluate on the validation set every N steps (0 = only at the end).
    pub eval_every: usize,
    /// Save a resumable checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// How many checkpoints to keep (0 = all).
    pub keep_checkpoints: usize,
    /// Gradient checkpointing: decoder layers recompute their activations in the backward
    /// pass instead of keeping them (about a third more compute, for long sequences; where
    /// layers run fused, the CPU in f32).
    pub gradient_checkpointing: bool,
    /// f32, or bf16 mixed precision (for GPUs).
    pub precision: Precision,
    /// Keep a safetensors base's projections quantized in this block format (QLoRA's idea:
    /// `q4_k` holds a model in about a quarter of bf16's memory); unset keeps them in
    /// `precision`. A GGUF base always keeps the types it stores.
    pub quantize: Option<Quantization>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            schedule: Schedule::Linear,
            min_lr_ratio: 0.0,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            batch_size: 4,
            grad_accum: 1,
            seq_len: 256,
            max_grad_norm: 1.0,
            epochs: 1,
            max_steps: None,
            seed: 42,
            val_fraction: 0.0,
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            gradient_checkpointing: false,
            precision: Precision::F32,
            quantize: None,
        }
    }
}

impl TrainConfig {
    /// Rejects out-of-range settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, field: &str, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(EngineError::config(field, msg))
            }
        };
        check(
            self.lr.is_finite() && self.lr > 0.0,
            "lr",
            "must be a positive number",
        )?;
        check(
            (0.0..1.0).contains(&self.beta1),
            "beta1",
            "must be in [0, 1)",
        )?;
        check(
            (0.0..1.0).contains(&self.beta2),
            "beta2",
            "must be in [0, 1)",
        )?;
        check(self.eps > 0.0, "eps", "must be positive")?;
        check(
            self.weight_decay >= 0.0,
            "weight_decay",
            "must not be negative",
        )?;
        check(
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "min_lr_ratio",
            "must be in [0, 1]",
        )?;
        check(
            (0.0..1.0).contains(&self.warmup_ratio),
            "warmup_ratio",
            "must be in [0, 1)",
        )?;
        check(self.batch_size > 0, "batch_size", "must be at least 1")?;
        check(self.grad_accum > 0, "grad_accum", "must be at least 1")?;
        check(self.seq_len > 0, "seq_len", "must be at least 1")?;
        check(
            self.max_grad_norm >= 0.0,
            "max_grad_norm",
            "must not be negative",
        )?;
        check(self.max_steps != Some(0), "max_steps", "must be at least 1")?;
        check(
            self.max_steps.is_some() || self.epochs > 0,
            "epochs",
            "must be at least 1",
        )?;
        check(
            (0.0..1.0).contains(&self.val_fraction),
            "val_fraction",
            "must be in [0, 1)",
        )?;
        Ok(())
    }

    /// Optimiser steps of a run whose epoch has `batches_per_epoch` micro-batches.
    pub fn total_steps(&self, batches_per_epoch: usize) -> usize {
        self.max_steps
            .unwrap_or_else(|| (self.epochs * batches_per_epoch).div_ceil(self.grad_accum))
    }

    /// Warm-up length for a run of `total` steps.
    pub fn warmup(&self, total: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as usize
        }
    }

    /// The learning rate at 0-based `step` of `total` (transformers' schedules).
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warmup = self.warmup(total);
        if step < warmup {
            return self.lr * step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        // The share of the way from the floor to the peak still left.
        let left = match self.schedule {
            Schedule::Constant => return self.lr,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        let floor = self.lr * self.min_lr_ratio;
        floor + (self.lr - floor) * left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedules against transformers' formulas: warm-up from 0, then linear or cosine
    /// decay to 0, or to `lr × min_lr_ratio` (cosine_with_min_lr).
    #[test]
    fn schedules_follow_transformers() {
        let at = |schedule, min_lr_ratio, step| {
            let cfg = TrainConfig {
                lr: 1.0,
                schedule,
                min_lr_ratio,
                warmup_steps: 2,
                ..Default::default()
            };
            cfg.lr_at(step, 12)
        };
        assert_eq!(at(Schedule::Linear, 0.0, 1), 0.5);
        assert_eq!(at(Schedule::Linear, 0.0, 2), 1.0);
        assert!((at(Schedule::Linear, 0.0, 7) - 0.5).abs() < 1e-12);
        assert!((at(Schedule::Cosine, 0.0, 7) - 0.5).abs() < 1e-12);
        assert!(at(Schedule::Cosine, 0.0, 12).abs() < 1e-12);
        assert!((at(Schedule::Cosine, 0.1, 12) - 0.1).abs() < 1e-12);
        assert!((at(Schedule::Cosine, 0.1, 7) - 0.55).abs() < 1e-12);
        assert!((at(Schedule::Linear, 0.2, 12) - 0.2).abs() < 1e-12);
        assert_eq!(at(Schedule::Constant, 0.5, 9), 1.0);
        let bad = TrainConfig {
            min_lr_ratio: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
