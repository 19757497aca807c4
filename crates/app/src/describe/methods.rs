//! What the app's method picker shows: each method in a sentence, and its hyperparameters
//! with defaults, ranges and a one-line explanation. Defaults are read from
//! [`MethodConfig::default`], so the picker and the engine cannot disagree.

use serde::Serialize;
use serde_json::Value;

use crate::runs::{MethodConfig, MethodKind};

/// The kind of value a hyperparameter takes, with its allowed range.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamRange {
    /// A whole number in `min..=max`.
    Int {
        /// Smallest allowed value.
        min: u64,
        /// Largest sensible value (larger values are allowed).
        max: u64,
    },
    /// A real number in `min..=max`.
    Float {
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// On or off.
    Bool,
    /// One of the listed values.
    Choice {
        /// The allowed values.
        options: Vec<&'static str>,
    },
    /// Module names (comma-separated), `all-linear`, or a regex over module paths.
    Modules {
        /// The names a Llama-family model offers.
        options: &'static [&'static str],
    },
    /// Layer indices: numbers and ranges, e.g. `0-15` or `0,2,4`.
    Layers,
    /// Free text.
    Text,
}

/// One setting: a hyperparameter of a method, or a field of the `[train]` table.
#[derive(Debug, Clone, Serialize)]
pub struct ParamInfo {
    /// The field of the `[method]` (or `[train]`) table it sets.
    pub field: &'static str,
    /// A short label.
    pub label: &'static str,
    /// What it does, in one line.
    pub help: &'static str,
    /// Its default (null: the method's own default, see `help`).
    pub default: Value,
    /// Allowed values.
    pub range: ParamRange,
    /// Shown only under "advanced".
    pub advanced: bool,
}

/// One method as the picker shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MethodInfo {
    /// The method's id (`lora`, `ia3`, …).
    pub kind: MethodKind,
    /// Its display name.
    pub name: &'static str,
    /// What it does, in one sentence.
    pub summary: &'static str,
    /// The library whose format it is exported in.
    pub exported_as: &'static str,
    /// Its hyperparameters, most important first.
    pub params: Vec<ParamInfo>,
    /// Whether it trains encoder-decoder models (T5) too.
    pub encoder_decoder: bool,
}

const LINEAR_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
    "all-linear",
];

/// Every method, in the order the picker lists them.
pub fn methods() -> Vec<MethodInfo> {
    MethodKind::ALL.into_iter().map(describe).collect()
}

/// One method's description.
pub fn describe(kind: MethodKind) -> MethodInfo {
    let d = MethodConfig::default();
    let p = |field, label, help, default: Value, range, advanced| ParamInfo {
        field,
        label,
        help,
        default,
        range,
        advanced,
    };
    let targets = |help| {
        p(
            "target_modules",
            "Target modules",
            help,
            Value::Null,
            ParamRange::Modules {
                options: LINEAR_MODULES,
            },
            false,
        )
    };
    let layers = p(
        "layers_to_transform",
        "Layers",
        "Adapt only these layers, e.g. 0-15 (default: all).",
        Value::Null,
        ParamRange::Layers,
        true,
    );
    let virtual_tokens = p(
        "num_virtual_tokens",
        "Virtual tokens",
        "How many learned tokens come before every input.",
        d.num_virtual_tokens.into(),
        ParamRange::Int { min: 1, max: 128 },
        false,
    );
    let reduction = p(
        "reduction_factor",
        "Reduction factor",
        "The bottleneck is hidden size / this wide; smaller trains more parameters.",
        d.reduction_factor.into(),
        ParamRange::Int { min: 1, max: 64 },
        false,
    );
    let (name, summary, exported_as, params) = match kind {
        MethodKind::Lora => (
            "LoRA",
            "Learns a low-rank update B·A beside each chosen weight matrix; the base model stays frozen.",
            "PEFT",
            vec![
                p("r", "Rank", "Width of the low-rank update; higher learns more, costs more.",
                  d.r.into(), ParamRange::Int { min: 1, max: 256 }, false),
                p("lora_alpha", "Alpha", "Scales the update by alpha / r (alpha / √r with rsLoRA).",
                  d.lora_alpha.into(), ParamRange::Float { min: 0.0, max: 512.0 }, false),
                targets("Which linear layers get an adapter (default q_proj, v_proj; all-linear for every one but lm_head)."),
                p("lora_dropout", "Dropout", "Dropout on the adapter's input during training.",
                  d.lora_dropout.into(), ParamRange::Float { min: 0.0, max: 0.9 }, true),
                p("use_rslora", "rsLoRA", "Scale by alpha / √r, which keeps high ranks stable.",
                  d.use_rslora.into(), ParamRange::Bool, true),
                p("use_dora", "DoRA", "Also learn a magnitude per output row (weight-decomposed LoRA).",
                  d.use_dora.into(), ParamRange::Bool, true),
                layers,
            ],
        ),
        MethodKind::Ia3 => (
            "IA3",
            "Learns one scaling vector per chosen layer: the fewest parameters of any method here.",
            "PEFT",
            vec![
                targets("Layers whose outputs (feed-forward: inputs) are scaled (default k_proj, v_proj, down_proj)."),
                p("feedforward_modules", "Feed-forward modules",
                  "Targets scaled on their input instead of their output (default down_proj).",
                  Value::Null, ParamRange::Modules { options: LINEAR_MODULES }, true),
                layers,
            ],
        ),
        MethodKind::PromptTuning => (
            "Prompt tuning",
            "Learns the embeddings of a few virtual tokens put before every input; the model is untouched.",
            "PEFT",
            vec![
                virtual_tokens,
                p("prompt_tuning_init", "Initialisation",
                  "Random values, embeddings of random vocabulary tokens, or of a text of yours.",
                  d.prompt_tuning_init.as_str().into(),
                  ParamRange::Choice { options: vec!["RANDOM", "SAMPLE_VOCAB", "TEXT"] }, false),
                p("prompt_tuning_init_text", "Initial text",
                  "With TEXT: a description of the task whose tokens start the virtual tokens.",
                  Value::Null, ParamRange::Text, false),
            ],
        ),
        MethodKind::PrefixTuning => (
            "Prefix tuning",
            "Learns keys and values that every attention layer sees before the input.",
            "PEFT",
            vec![virtual_tokens],
        ),
        MethodKind::Houlsby => (
            "Houlsby adapter",
            "Small bottleneck networks after attention and after the MLP of every layer.",
            "adapters",
            vec![reduction],
        ),
        MethodKind::Pfeiffer => (
            "Pfeiffer adapter",
            "One small bottleneck network after the MLP of every layer: half Houlsby's size.",
            "adapters",
            vec![reduction],
        ),
        MethodKind::Freeze => (
            "Freeze",
            "Trains chosen modules (e.g. lm_head, the last layers) fully and freezes the rest.",
            "safetensors (trained weights)",
            vec![
                p("trainable_last_layers", "Last layers",
                  "Train the last N decoder layers fully.",
                  d.trainable_last_layers.into(), ParamRange::Int { min: 0, max: 128 }, false),
                p("trainable_modules", "Modules",
                  "Modules to train fully, e.g. lm_head, model.norm.",
                  Value::Array(Vec::new()), ParamRange::Modules { options: LINEAR_MODULES }, false),
            ],
        ),
        MethodKind::Full => (
            "Full fine-tuning",
            "Trains every weight: the baseline, needing the most memory by far.",
            "safetensors (whole model)",
            Vec::new(),
        ),
    };
    MethodInfo {
        kind,
        name,
        summary,
        exported_as,
        params,
        encoder_decoder: kind.on_encoder_decoder(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method is described for the picker; each hyperparameter names a real field of the
    /// `[method]` table and its default is the engine's.
    #[test]
    fn method_descriptions_match_the_config() {
        let all = methods();
        assert_eq!(all.len(), 8);
        let defaults = serde_json::to_value(MethodConfig::default()).expect("json");
        let fields = [
            "target_modules",
            "feedforward_modules",
            "prompt_tuning_init_text",
            "layers_to_transform",
        ];
        for m in &all {
            assert!(
                !m.summary.is_empty() && m.summary.ends_with('.'),
                "{}",
                m.name
            );
            let kind: MethodKind = m.kind.as_str().parse().expect("kind");
            assert_eq!(kind, m.kind);
            for p in &m.params {
                assert!(
                    defaults.get(p.field).is_some() || fields.contains(&p.field),
                    "{}: `{}` is not a method field",
                    m.name,
                    p.field
                );
                if !p.default.is_null() {
                    assert_eq!(defaults[p.field], p.default, "{}.{}", m.name, p.field);
                }
                if let ParamRange::Int { min, max } = p.range {
                    let d = p.default.as_u64().unwrap_or(min);
                    assert!(min <= d && d <= max, "{}.{}", m.name, p.field);
                }
            }
        }
        // A config built from every default parses back.
        let json = serde_json::to_string(&all).expect("serialize");
        assert!(json.contains("\"kind\":\"prompt-tuning\""));
    }
}
