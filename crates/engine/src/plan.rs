//! Parameter counts from config.json alone, printed exactly as PEFT's
//! `print_trainable_parameters` prints them.

use crate::error::Result;
use crate::model::t5::T5Config;
use crate::model::LlamaConfig;
use crate::peft::{freeze, MethodConfig, MethodKind};

/// Trainable and total parameter counts of a model wrapped by a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    /// Parameters the method trains.
    pub trainable: u64,
    /// All parameters, adapter included; tied embeddings count once.
    pub total: u64,
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl std::fmt::Display for ParamCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        };
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.total)
        )
    }
}

/// Counts parameters for `method` on a T5 described by `cfg`, without loading weights, as
/// PEFT counts them (LoRA: `r·(in + out)` per target, DoRA adding the outputs; IA³: one scale
/// per output, per input for feed-forward modules; prompt tuning: two rows of `d_model` per
/// virtual token; prefix tuning: layers·2·`d_model` per virtual token; freeze and full: the
/// weights they train, of the model's own).
pub fn count_params_t5(cfg: &T5Config, method: &MethodConfig) -> Result<ParamCounts> {
    let virtual_tokens = method.num_virtual_tokens as u64;
    if matches!(method.kind, MethodKind::Freeze | MethodKind::Full) {
        let trained = method.t5_trained_weights(cfg)?;
        return Ok(ParamCounts {
            trainable: cfg
                .weight_shapes()
                .iter()
                .filter(|(n, _)| trained.contains(n))
                .map(|(_, s)| s.iter().product::<usize>() as u64)
                .sum(),
            total: cfg.parameters(),
        });
    }
    let adapter = match method.kind {
        MethodKind::PromptTuning => Some(
            crate::model::t5::prompt_rows(method.num_virtual_tokens) as u64 * cfg.d_model as u64,
        ),
        MethodKind::PrefixTuning => Some(virtual_tokens * cfg.prefix_width()? as u64),
        _ => None,
    };
    if let Some(adapter) = adapter {
        method.with_t5_defaults()?;
        return Ok(ParamCounts {
            trainable: adapter,
            total: cfg.parameters() + adapter,
        });
    }
    let projections = cfg.projections();
    let names: Vec<String> = projections.iter().map(|(n, _, _)| n.clone()).collect();
    let (targets, feedforward) = method.t5_targets(&names)?;
    let adapter: u64 = targets
        .iter()
        .map(|&i| {
            let (_, fan_in, fan_out) = projections[i];
            match method.kind {
                MethodKind::Lora => {
                    method.r as u64 * (fan_in + fan_out) as u64
                        + u64::from(method.use_dora) * fan_out as u64
                }
                _ if feedforward.contains(&i) => fan_in as u64,
                _ => fan_out as u64,
            }
        })
        .sum();
    Ok(ParamCounts {
        trainable: adapter,
        total: cfg.parameters() + adapter,
    })
}

/// Counts parameters for `method` on the model described by `cfg`, without loading weights.
pub fn count_params(cfg: &LlamaConfig, method: &MethodConfig) -> Result<ParamCounts> {
    method.validate(cfg)?;
    let weights = cfg.weight_shapes();
    let size = |s: &Vec<usize>| s.iter().product::<usize>() as u64;
    let base: u64 = weights.iter().map(|(_, s)| size(s)).sum();
    Ok(match method.kind {
        MethodKind::Lora => {
            let r = method.r as u64;
            let adapter: u64 = method
                .lora_targets(cfg)?
                .iter()
                .map(|(_, i, o)| {
                    r * (*i as u64 + *o as u64) + u64::from(method.use_dora) * *o as u64
                })
                .sum();
            ParamCounts {
                trainable: adapter,
                total: base + adapter,
            }
        }
        MethodKind::Ia3 => {
            let adapter: u64 = method
                .ia3_targets(cfg)?
                .iter()
                .map(|(_, i, o, ff)| if *ff { *i as u64 } else { *o as u64 })
                .sum();
            ParamCounts {
                trainable: adapter,
                total: base + adapter,
            }
        }
        MethodKind::PromptTuning | MethodKind::PrefixTuning => {
            let width = match method.kind {
                MethodKind::PrefixTuning => crate::peft::prompt::prefix_width(cfg),
                _ => cfg.hidden_size,
            };
            let adapter = (method.num_virtual_tokens * width) as u64;
            ParamCounts {
                trainable: adapter,
                total: base + adapter,
            }
        }
        MethodKind::Houlsby | MethodKind::Pfeiffer => {
            let (h, w) = (
                cfg.hidden_size as u64,
                crate::model::adapters::bottleneck::width(cfg.hidden_size, method.reduction_factor)
                    as u64,
            );
            let per_adapter = 2 * h * w + w + h;
            let sites =
                crate::model::adapters::bottleneck::sites(method.kind == MethodKind::Houlsby).len()
                    as u64;
            let adapter = per_adapter * sites * cfg.num_hidden_layers as u64;
            ParamCounts {
                trainable: adapter,
                total: base + adapter,
            }
        }
        MethodKind::Freeze => {
            let names = freeze::trainable_weight_names(cfg, method)?;
            let trainable = weights
                .iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(_, s)| size(s))
                .sum();
            ParamCounts {
                trainable,
                total: base,
            }
        }
        MethodKind::Full => ParamCounts {
            trainable: base,
            total: base,
        },
    })
}
