//! Which modules a method wraps, matched exactly as PEFT matches them
//! (`tuners_utils.py::check_target_module_exists`).

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// PEFT's `target_modules`: a list of names, a regex, or `all-linear`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names; each matches a module path equal to it or ending in `.name`.
    List(Vec<String>),
    /// A regex that must match the whole module path, or the literal `all-linear`.
    Pattern(String),
}

impl Default for TargetModules {
    fn default() -> Self {
        // PEFT's default for Llama-family models (`utils/constants.py`).
        Self::List(vec!["q_proj".into(), "v_proj".into()])
    }
}

impl TargetModules {
    /// Parses the command-line form: `all-linear`, a comma-separated list of names, or a
    /// regex (anything holding regex metacharacters).
    pub fn parse_cli(s: &str) -> Self {
        let s = s.trim();
        if s == "all-linear" || s.chars().any(|c| "*()[]|\\^$+?".contains(c)) {
            Self::Pattern(s.to_string())
        } else {
            Self::List(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            )
        }
    }

    fn is_all_linear(&self) -> bool {
        matches!(self, Self::Pattern(p) if p == "all-linear")
    }
}

/// The layer index in a module path such as `model.layers.3.mlp.up_proj` or T5's
/// `encoder.block.3.layer.0.SelfAttention.q` (PEFT's layer patterns `layers` and `block`).
pub fn layer_index(module: &str) -> Option<usize> {
    let mut parts = module.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" || p == "block" {
            return parts.next().and_then(|i| i.parse().ok());
        }
    }
    None
}

/// Picks the modules (by index into `modules`) that `targets` and `layers` select.
/// `modules` are full module paths of the linear layers, `lm_head` among them.
/// A selection that matches nothing is an error that lists the names that exist.
pub fn select_modules(
    modules: &[String],
    targets: &TargetModules,
    layers: Option<&[usize]>,
) -> Result<Vec<usize>> {
    let regex = match targets {
        TargetModules::Pattern(p) if !targets.is_all_linear() => Some(
            Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| EngineError::config("target_modules", e.to_string()))?,
        ),
        _ => None,
    };
    if let TargetModules::List(names) = targets {
        if names.is_empty() {
            return Err(EngineError::config("target_modules", "the list is empty"));
        }
    }
    let picked: Vec<usize> = modules
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            let name_ok = match targets {
                // PEFT's all-linear skips the output layer.
                _ if targets.is_all_linear() => m.as_str() != "lm_head",
                TargetModules::List(names) => names
                    .iter()
                    .any(|n| *m == n || m.ends_with(&format!(".{n}"))),
                TargetModules::Pattern(_) => regex.as_ref().is_some_and(|r| r.is_match(m)),
            };
            let layer_ok = match layers {
                Some(ls) => layer_index(m).is_some_and(|i| ls.contains(&i)),
                None => true,
            };
            name_ok && layer_ok
        })
        .map(|(i, _)| i)
        .collect();
    if picked.is_empty() {
        let mut short: Vec<&str> = modules
            .iter()
            .map(|m| m.rsplit('.').next().unwrap_or(m))
            .collect();
        short.sort_unstable();
        short.dedup();
        let what = match targets {
            TargetModules::List(n) => n.join(", "),
            TargetModules::Pattern(p) => p.clone(),
        };
        let layer_note = layers
            .map(|l| format!(" in layers {l:?}"))
            .unwrap_or_default();
        return Err(EngineError::config(
            "target_modules",
            format!(
                "`{what}` matches no module{layer_note}; the linear modules are: {}",
                short.join(", ")
            ),
        ));
    }
    Ok(picked)
}

/// Parses a layer selection such as `0-15` or `0,2,4-6`.
pub fn parse_layers(s: &str) -> Result<Vec<usize>> {
    let bad = |p: &str| {
        EngineError::config(
            "layers_to_transform",
            format!("`{p}` is not a layer number or range"),
        )
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad(part))?,
                    b.trim().parse().map_err(|_| bad(part))?,
                );
                if a > b {
                    return Err(bad(part));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    Ok(out)
}

/// PEFT's IA³ targets for a `model_type` (`utils/constants.py`,
/// `TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`): Llama and Mistral scale keys, Qwen
/// and Gemma queries; PEFT has none for Phi-3 (its fused projections), so neither has the
/// studio.
pub fn ia3_default_targets(model_type: &str) -> Option<[&'static str; 3]> {
    match model_type {
        "t5" => Some(["k", "v", "wo"]),
        "llama" | "mistral" => Some(["k_proj", "v_proj", "down_proj"]),
        "phi3" => None,
        _ => Some(["q_proj", "v_proj", "down_proj"]),
    }
}
/// PEFT's IA³ feed-forward modules for every supported family.
pub const IA3_DEFAULT_FEEDFORWARD: [&str; 1] = ["down_proj"];

/// PEFT's IA³ feed-forward modules for T5 (`wo`, its feed-forward block's output projection).
pub const IA3_T5_FEEDFORWARD: [&str; 1] = ["wo"];

/// PEFT's LoRA targets for T5 (`q` and `v` of every attention, cross-attention included).
pub const LORA_T5_TARGETS: [&str; 2] = ["q", "v"];
