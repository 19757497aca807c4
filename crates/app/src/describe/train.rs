//! The `[train]` table as the New run form and the command line's flags show it: one entry per
//! field of the engine's `TrainConfig`, with a label, one line of help and its range. Defaults
//! are read from `TrainConfig::default`, so the form and the engine cannot disagree; a field
//! added to `TrainConfig` without an entry here fails `every_train_field_is_described`.

use serde::Serialize;
use serde_json::{json, Value};

use super::{ParamInfo, ParamRange};
use crate::plan::QUANTIZATIONS;
use crate::runs::TrainConfig;

/// Every `[train]` setting, in the order the form lists them (the first ones outside
/// "Advanced").
pub fn train_settings() -> Vec<ParamInfo> {
    let defaults = serde_json::to_value(TrainConfig::default()).unwrap_or_default();
    let p = |field: &'static str, label, help, range, advanced| ParamInfo {
        field,
        label,
        help,
        default: defaults.get(field).cloned().unwrap_or(Value::Null),
        range,
        advanced,
    };
    let int = |min, max| ParamRange::Int { min, max };
    let float = |min, max| ParamRange::Float { min, max };
    vec![
        p("epochs", "Epochs", "Passes over the data (when no step limit is set).", int(1, 100), false),
        p("lr", "Learning rate", "Peak rate after warm-up.", float(0.0, 1.0), false),
        p("batch_size", "Batch size", "Examples per micro-batch.", int(1, 256), false),
        p("seq_len", "Sequence length", "Tokens per example; longer ones are cut.", int(1, 32_768), false),
        p("val_fraction", "Validation fraction", "Held out to measure validation loss (0: none).", float(0.0, 0.9), true),
        p("eval_every", "Evaluate every", "Steps between validation losses (0: only at the end).", int(0, 10_000), true),
        p("max_steps", "Step limit", "Stop after this many optimiser steps (empty: run the epochs).", int(1, 1_000_000), true),
        p("grad_accum", "Gradient accumulation", "Micro-batches averaged into one optimiser step.", int(1, 256), true),
        p("schedule", "Schedule", "How the rate moves after warm-up: linear or cosine to 0, or constant.",
          ParamRange::Choice { options: vec!["linear", "cosine", "constant"] }, true),
        p("min_lr_ratio", "Final rate", "Where linear and cosine decay end, as a fraction of the peak rate (0: they fall to 0).", float(0.0, 1.0), true),
        p("warmup_steps", "Warm-up steps", "Steps the rate rises from 0 (overrides the warm-up ratio).", int(0, 100_000), true),
        p("warmup_ratio", "Warm-up ratio", "Warm-up as a fraction of all steps.", float(0.0, 0.99), true),
        p("weight_decay", "Weight decay", "Decoupled, AdamW.", float(0.0, 10.0), true),
        p("max_grad_norm", "Gradient clipping", "Clip the global gradient norm to this (0: no clipping).", float(0.0, 1000.0), true),
        p("beta1", "AdamW β₁", "Decay of the gradient's running mean.", float(0.0, 0.9999), true),
        p("beta2", "AdamW β₂", "Decay of the squared gradient's running mean.", float(0.0, 0.99999), true),
        p("eps", "AdamW ε", "Added to the denominator for stability.", float(1e-12, 1e-3), true),
        p("seed", "Seed", "Data order, dropout and adapter initialisation.", int(0, u64::from(u32::MAX)), true),
        p("checkpoint_every", "Checkpoint every", "Steps between resumable checkpoints (0: only at the end).", int(0, 100_000), true),
        p("keep_checkpoints", "Checkpoints kept", "The newest this many stay (0: all).", int(0, 100), true),
        p("gradient_checkpointing", "Gradient checkpointing",
          "Recompute each layer in the backward pass: far less memory for long sequences, about a third slower.",
          ParamRange::Bool, true),
        p("precision", "Precision",
          "bf16 mixed: half the weights' memory, trained values kept in f32; fastest on GPUs and on CPUs with AVX-512-BF16, about f32's speed on other CPUs.",
          ParamRange::Choice { options: vec!["f32", "bf16"] }, true),
        p("quantize", "Base weights",
          "Hold the base's projections quantized while adapters train: q4_k takes about a quarter of bf16's memory, a little slower; the adapter is the same PEFT adapter.",
          ParamRange::Choice { options: QUANTIZATIONS.iter().map(|q| q.name()).collect() }, true),
    ]
}

/// A named set of `[train]` values the form offers as one choice.
#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    /// Its id (`quick`).
    pub name: &'static str,
    /// Its label.
    pub label: &'static str,
    /// What it is for, in a few words.
    pub help: &'static str,
    /// The `[train]` fields it sets.
    pub train: Value,
}

/// The form's presets, of growing effort; the first is where the form starts.
pub fn presets() -> Vec<Preset> {
    vec![
        Preset {
            name: "quick",
            label: "Quick",
            help: "a first look in minutes",
            train: json!({"epochs": 1, "lr": 2e-3, "batch_size": 4, "seq_len": 128, "eval_every": 4}),
        },
        Preset {
            name: "balanced",
            label: "Balanced",
            help: "the usual choice",
            train: json!({"epochs": 2, "lr": 1e-3, "batch_size": 4, "seq_len": 256, "eval_every": 10}),
        },
        Preset {
            name: "thorough",
            label: "Thorough",
            help: "more passes, gentler rate",
            train: json!({"epochs": 3, "lr": 5e-4, "batch_size": 8, "seq_len": 512, "eval_every": 25}),
        },
    ]
}

/// Where the form starts apart from the engine's defaults and the first preset: a fifth
/// held out, so that a first run shows a validation curve.
pub fn form_start() -> Value {
    json!({"val_fraction": 0.2})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The descriptions and `TrainConfig` name the same fields, so a new setting cannot reach
    /// the engine without reaching the form and the command line.
    #[test]
    fn every_train_field_is_described() {
        let defaults = serde_json::to_value(TrainConfig::default()).expect("json");
        let mut fields: Vec<&str> = defaults
            .as_object()
            .expect("a table")
            .keys()
            .map(String::as_str)
            .collect();
        let mut described: Vec<&str> = train_settings().iter().map(|p| p.field).collect();
        fields.sort_unstable();
        described.sort_unstable();
        assert_eq!(described, fields);
        for p in train_settings() {
            assert!(p.help.ends_with('.'), "{}: help is one sentence", p.field);
            if let ParamRange::Choice { options } = &p.range {
                if let Some(d) = p.default.as_str() {
                    assert!(
                        options.contains(&d),
                        "{}: default `{d}` is offered",
                        p.field
                    );
                }
            }
        }
    }

    /// Each preset, and the form's start, are `[train]` values the engine reads and accepts.
    #[test]
    fn presets_are_valid_train_tables() {
        let starts = presets()
            .into_iter()
            .map(|p| (p.name, p.train))
            .chain([("start", form_start())]);
        for (name, values) in starts {
            let cfg: TrainConfig =
                serde_json::from_value(values).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            cfg.validate()
                .unwrap_or_else(|e| panic!("preset {name}: {e}"));
        }
        let epochs: Vec<u64> = presets()
            .iter()
            .map(|p| p.train["epochs"].as_u64().expect("epochs"))
            .collect();
        assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
    }
}
