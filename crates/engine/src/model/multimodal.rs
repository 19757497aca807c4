//! The text model inside a multimodal checkpoint: Gemma 3 4B, 12B and 27B are published as
//! `Gemma3ForConditionalGeneration` (a SigLIP vision tower, a projector and a Gemma 3 text
//! decoder). The studio trains, runs and exports the text decoder; the vision tensors stay in
//! the files, and a merged export carries them unchanged.
//!
//! Names, from transformers 5's `models/gemma3/modeling_gemma3.py`: the decoder lives under
//! `model.language_model.` (`lm_head` at the top); checkpoints saved before transformers 4.52
//! (the hub's original Gemma 3 files) keep it under `language_model.model.` with
//! `language_model.lm_head`, which transformers renames on load
//! (`_checkpoint_conversion_mapping`) and turns back when it saves (5.25 still writes the
//! original names). PEFT names an adapter's modules by the model's own paths, so an adapter
//! export uses the transformers 5 paths; a merged model keeps its base's file naming.
//! `text_config` may leave out any field `Gemma3TextConfig` has a default for (the hub's
//! Gemma 3 4B config lists five); those defaults are copied here. docs/FAMILIES.md has the
//! details.

use serde_json::{json, Map, Value};

use crate::error::{EngineError, Result};

/// A multimodal architecture whose text decoder the studio runs.
struct Wrapper {
    /// The checkpoint's `architectures[0]`.
    architecture: &'static str,
    /// The text decoder's architecture (a row of `family::FAMILIES`).
    text_architecture: &'static str,
    /// The text config's values when `text_config` leaves them out.
    text_defaults: fn() -> Value,
}

const WRAPPERS: &[Wrapper] = &[Wrapper {
    architecture: "Gemma3ForConditionalGeneration",
    text_architecture: "Gemma3ForCausalLM",
    // transformers 5 `Gemma3TextConfig.__init__`'s defaults.
    text_defaults: || {
        json!({
            "model_type": "gemma3_text",
            "vocab_size": 262208,
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "query_pre_attn_scalar": 256,
            "sliding_window": 4096,
            "sliding_window_pattern": 6,
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null,
            "eos_token_id": 1,
            "tie_word_embeddings": true
        })
    },
}];

/// Where the decoder's tensors sit in the checkpoint, as transformers 5 names them.
const TEXT_ROOT: &str = "model.language_model.";
/// The same before transformers 4.52.
const OLD_TEXT_ROOT: &str = "language_model.model.";
/// The old checkpoints' output head.
const OLD_LM_HEAD: &str = "language_model.lm_head.";

/// How a multimodal checkpoint's files name the decoder's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `model.language_model.…`, `lm_head.…`: the model's module paths in transformers 5.
    Current,
    /// `language_model.model.…`, `language_model.lm_head.…`: the hub's original files, and
    /// what transformers 5's `save_pretrained` still writes.
    Original,
}

impl Naming {
    /// The naming of a checkpoint holding the tensors `stored`.
    pub fn of<'a>(mut stored: impl Iterator<Item = &'a str>) -> Self {
        match stored.any(|n| n.starts_with(OLD_TEXT_ROOT) || n.starts_with(OLD_LM_HEAD)) {
            true => Self::Original,
            false => Self::Current,
        }
    }
}

/// The multimodal checkpoint a text decoder was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multimodal {
    /// The checkpoint's `architectures[0]`, e.g. `Gemma3ForConditionalGeneration`.
    pub architecture: String,
}

/// The multimodal architectures whose text decoder the studio runs.
pub fn architectures() -> impl Iterator<Item = &'static str> {
    WRAPPERS.iter().map(|w| w.architecture)
}

fn wrapper(architecture: &str) -> Option<&'static Wrapper> {
    WRAPPERS.iter().find(|w| w.architecture == architecture)
}

/// The text decoder's architecture inside `architecture`, if it is a multimodal one.
pub fn text_architecture(architecture: &str) -> Option<&'static str> {
    wrapper(architecture).map(|w| w.text_architecture)
}

/// For a multimodal `config` (a whole config.json): the text decoder's config as a
/// text-only checkpoint would write it — `text_config` over the family's defaults, its
/// architecture the text decoder's, and the fields only the outer config gives (dtype, tied
/// embeddings, end tokens) taken from there — with what it was read from. `None` for any
/// other config.
pub fn text_config(config: &Value) -> Result<Option<(Value, Multimodal)>> {
    let architecture = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(wrapper) = wrapper(architecture) else {
        return Ok(None);
    };
    let given = match config.get("text_config") {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => {
            return Err(EngineError::config(
                "text_config",
                "must be an object (the text decoder's config)",
            ))
        }
    };
    let mut text = match (wrapper.text_defaults)() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    // The outer config speaks for the whole checkpoint where the text config is silent.
    for key in [
        "torch_dtype",
        "dtype",
        "tie_word_embeddings",
        "eos_token_id",
    ] {
        if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
            text.insert(key.into(), v.clone());
        }
    }
    text.extend(given);
    text.insert("architectures".into(), json!([wrapper.text_architecture]));
    Ok(Some((
        Value::Object(text),
        Multimodal {
            architecture: architecture.to_string(),
        },
    )))
}

impl Multimodal {
    /// The decoder's name (`model.layers.0.…`, `lm_head.weight`) of a tensor stored as
    /// `stored` in either naming; `None` for the vision tower's and the projector's.
    pub fn text_name(stored: &str) -> Option<String> {
        if let Some(rest) = stored
            .strip_prefix(TEXT_ROOT)
            .or_else(|| stored.strip_prefix(OLD_TEXT_ROOT))
        {
            return Some(format!("model.{rest}"));
        }
        if let Some(rest) = stored.strip_prefix(OLD_LM_HEAD) {
            return Some(format!("lm_head.{rest}"));
        }
        (stored == "lm_head" || stored.starts_with("lm_head.")).then(|| stored.to_string())
    }

    /// The name of the decoder's `name` in the multimodal model: its module path there
    /// (transformers 5's, what PEFT names adapters by).
    pub fn stored_name(name: &str) -> String {
        Self::stored_name_as(name, Naming::Current)
    }

    /// The name of the decoder's `name` in a checkpoint named as `naming`.
    pub fn stored_name_as(name: &str, naming: Naming) -> String {
        match (naming, name.strip_prefix("model.")) {
            (Naming::Current, Some(rest)) => format!("{TEXT_ROOT}{rest}"),
            (Naming::Original, Some(rest)) => format!("{OLD_TEXT_ROOT}{rest}"),
            (Naming::Current, None) => name.to_string(),
            (Naming::Original, None) => format!("language_model.{name}"),
        }
    }

    /// PEFT's `target_modules` for exactly the decoder's `modules` in the multimodal model:
    /// a regex, since module names alone (`q_proj`) would also reach the vision tower's
    /// attention. PEFT full-matches it against each module's path and then ignores
    /// `layers_to_transform`, so the layers are spelled out unless every layer is wrapped.
    pub fn target_pattern(modules: &[String], num_layers: usize) -> String {
        let mut layers: Vec<usize> = Vec::new();
        let mut parts: Vec<&str> = Vec::new();
        let mut others: Vec<String> = Vec::new();
        for m in modules {
            let in_layer = m.strip_prefix("model.layers.").and_then(|rest| {
                let (l, part) = rest.split_once('.')?;
                Some((l.parse::<usize>().ok()?, part))
            });
            match in_layer {
                Some((l, part)) => {
                    layers.push(l);
                    parts.push(part);
                }
                None => others.push(regex::escape(&Self::stored_name(m))),
            }
        }
        layers.sort_unstable();
        layers.dedup();
        parts.sort_unstable();
        parts.dedup();
        // Every wrapped layer must wrap the same parts for the product to be exact.
        let product = layers.len() * parts.len();
        let mut alternatives = others;
        if product == modules.len() - alternatives.len() {
            if !parts.is_empty() {
                let layer = if layers.len() == num_layers {
                    r"\d+".to_string()
                } else {
                    group(layers.iter().map(usize::to_string))
                };
                let root = regex::escape(&format!("{TEXT_ROOT}layers."));
                let parts = group(parts.iter().map(|p| regex::escape(p)));
                alternatives.insert(0, format!(r"{root}{layer}\.{parts}"));
            }
        } else {
            alternatives = modules
                .iter()
                .map(|m| regex::escape(&Self::stored_name(m)))
                .collect();
        }
        match alternatives.len() {
            1 => alternatives.remove(0),
            _ => group(alternatives.into_iter()),
        }
    }
}

/// `(?:a|b|…)`, or `a` alone.
fn group(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.len() {
        1 => items[0].clone(),
        _ => format!("(?:{})", items.join("|")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_ways() {
        for stored in [
            "model.language_model.layers.3.self_attn.q_proj.weight",
            "language_model.model.layers.3.self_attn.q_proj.weight",
        ] {
            assert_eq!(
                Multimodal::text_name(stored).as_deref(),
                Some("model.layers.3.self_attn.q_proj.weight")
            );
        }
        assert_eq!(
            Multimodal::text_name("language_model.lm_head.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(
            Multimodal::text_name("model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"),
            None
        );
        assert_eq!(
            Multimodal::text_name("multi_modal_projector.mm_input_projection_weight"),
            None
        );
        assert_eq!(
            Multimodal::stored_name("model.norm.weight"),
            "model.language_model.norm.weight"
        );
        for naming in [Naming::Current, Naming::Original] {
            for name in ["model.norm.weight", "lm_head.weight"] {
                let stored = Multimodal::stored_name_as(name, naming);
                assert_eq!(Multimodal::text_name(&stored).as_deref(), Some(name));
                assert_eq!(Naming::of([stored.as_str()].into_iter()), naming);
            }
        }
    }

    #[test]
    fn target_patterns_match_exactly_the_wrapped_modules() {
        let all = |layers: &[usize], parts: &[&str]| -> Vec<String> {
            layers
                .iter()
                .flat_map(|l| parts.iter().map(move |p| format!("model.layers.{l}.{p}")))
                .collect()
        };
        let check = |modules: Vec<String>, num_layers: usize| {
            let pattern = Multimodal::target_pattern(&modules, num_layers);
            let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
            let every = all(
                &(0..num_layers).collect::<Vec<_>>(),
                &["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
            )
            .into_iter()
            .chain(["lm_head".to_string()]);
            for m in every {
                let stored = Multimodal::stored_name(&m);
                assert_eq!(
                    re.is_match(&stored),
                    modules.contains(&m),
                    "{pattern} on {stored}"
                );
            }
            for vision in [
                "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
                "model.vision_tower.encoder.layers.1.self_attn.v_proj",
            ] {
                assert!(!re.is_match(vision), "{pattern} on {vision}");
            }
            pattern
        };
        let p = check(
            all(&[0, 1, 2], &["self_attn.q_proj", "self_attn.v_proj"]),
            3,
        );
        assert_eq!(
            p,
            r"model\.language_model\.layers\.\d+\.(?:self_attn\.q_proj|self_attn\.v_proj)"
        );
        check(all(&[1], &["mlp.down_proj"]), 3);
        let mut uneven = all(&[0], &["self_attn.q_proj"]);
        uneven.extend(all(&[2], &["mlp.down_proj"]));
        check(uneven, 3);
        let mut with_head = all(&[0, 1, 2], &["self_attn.q_proj"]);
        with_head.push("lm_head".into());
        check(with_head, 3);
    }

    #[test]
    fn a_sparse_text_config_takes_the_family_defaults() {
        let config = json!({
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "torch_dtype": "bfloat16",
            "eos_token_id": [1, 106],
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                "model_type": "gemma3_text", "num_hidden_layers": 34,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
        });
        let (text, mm) = text_config(&config).unwrap().unwrap();
        assert_eq!(mm.architecture, "Gemma3ForConditionalGeneration");
        assert_eq!(text["architectures"], json!(["Gemma3ForCausalLM"]));
        assert_eq!(text["hidden_size"], 2560);
        assert_eq!(text["num_attention_heads"], 8);
        assert_eq!(text["torch_dtype"], "bfloat16");
        assert_eq!(text["eos_token_id"], json!([1, 106]));
        assert!(text_config(&json!({"architectures": ["LlamaForCausalLM"]}))
            .unwrap()
            .is_none());
        assert!(text_config(
            &json!({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": 3})
        )
        .is_err());
    }
}
