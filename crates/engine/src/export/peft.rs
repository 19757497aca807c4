//! Export of a LoRA, DoRA, IA³, prompt- or prefix-tuning adapter as a PEFT directory: `adapter_config.json` (sorted
//! keys, indent 2, only keys PEFT ≥ 0.10 knows) and `adapter_model.safetensors` (F32 tensors
//! named `base_model.model.<module>.lora_{A,B}.weight`, with DoRA also
//! `base_model.model.<module>.lora_magnitude_vector`, for IA³ `base_model.model.<module>.ia3_l`;
//! metadata `format = pt`), or prompt and prefix tuning's bare `prompt_embeddings`. See
//! docs/FORMATS.md §1–§4.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use crate::error::{EngineError, Result};
use crate::fsutil::{safetensors_bytes, write_atomic};
use crate::model::multimodal::Multimodal;
use crate::peft::prompt::PROMPT_EMBEDDINGS;
use crate::peft::{MethodConfig, MethodKind, PromptInit, TargetModules};

/// What the exported config records about the base model.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// `base_model_name_or_path`: the model folder or hub id the adapter was trained on.
    pub base_model: String,
    /// PEFT's `task_type`: `CAUSAL_LM`, or `SEQ_2_SEQ_LM` for an encoder-decoder model (T5).
    pub task_type: &'static str,
    /// The decoder's layer count when it sits in a multimodal checkpoint (Gemma 3 4B–27B):
    /// modules are then named as that model names them, and `target_modules` is a pattern
    /// that reaches the decoder's modules alone (`model::multimodal`).
    pub multimodal_layers: Option<usize>,
}

impl ExportInfo {
    /// PEFT's `num_transformer_submodules` for prompt learning: 2 on an encoder-decoder
    /// model (a prompt table then holds two rows per virtual token), else 1.
    pub fn transformer_submodules(&self) -> usize {
        match self.task_type {
            "SEQ_2_SEQ_LM" => 2,
            _ => 1,
        }
    }
}

/// `target_modules` as PEFT records it: a regex as given, otherwise the sorted names of the
/// modules actually wrapped (PEFT expands `all-linear` and stores names, not paths). In a
/// multimodal model, a pattern matching exactly the wrapped modules' paths there.
fn recorded_targets(
    targets: &Option<TargetModules>,
    wrapped: &[String],
    info: &ExportInfo,
) -> Value {
    if let Some(layers) = info.multimodal_layers {
        return json!(Multimodal::target_pattern(wrapped, layers));
    }
    match targets {
        Some(TargetModules::Pattern(p)) if p != "all-linear" => json!(p),
        _ => {
            let mut names: Vec<&str> = wrapped
                .iter()
                .map(|m| m.rsplit('.').next().unwrap_or(m))
                .collect();
            names.sort_unstable();
            names.dedup();
            json!(names)
        }
    }
}

/// An `adapter_config.json` of `peft_type`: the fields every PEFT config has, plus the
/// method's own `fields` (keys sorted, as PEFT writes them).
fn peft_config(
    info: &ExportInfo,
    peft_type: &str,
    fields: impl IntoIterator<Item = (&'static str, Value)>,
) -> Value {
    let mut config: BTreeMap<&str, Value> = BTreeMap::from([
        ("auto_mapping", Value::Null),
        ("base_model_name_or_path", json!(info.base_model)),
        ("inference_mode", json!(true)),
        ("modules_to_save", Value::Null),
        ("peft_type", json!(peft_type)),
        ("revision", Value::Null),
        ("task_type", json!(info.task_type)),
    ]);
    config.extend(fields);
    json!(config)
}

/// The `adapter_config.json` PEFT writes for a LoRA (or DoRA) `method`. `all-linear` is
/// recorded as the list of module names it expanded to, as PEFT records it.
pub fn adapter_config(
    method: &MethodConfig,
    info: &ExportInfo,
    trained_modules: &[String],
) -> Value {
    peft_config(
        info,
        "LORA",
        [
            ("alpha_pattern", json!({})),
            ("bias", json!("none")),
            ("fan_in_fan_out", json!(false)),
            ("init_lora_weights", json!(true)),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", json!(method.layers_to_transform)),
            ("loftq_config", json!({})),
            ("lora_alpha", json!(method.lora_alpha)),
            ("lora_dropout", json!(method.lora_dropout)),
            ("megatron_config", Value::Null),
            ("megatron_core", json!("megatron.core")),
            ("r", json!(method.r)),
            ("rank_pattern", json!({})),
            (
                "target_modules",
                recorded_targets(&method.target_modules, trained_modules, info),
            ),
            ("use_dora", json!(method.use_dora)),
            ("use_rslora", json!(method.use_rslora)),
        ],
    )
}

/// The `adapter_config.json` PEFT writes for an IA³ `method` (docs/FORMATS.md §3).
pub fn ia3_adapter_config(
    method: &MethodConfig,
    info: &ExportInfo,
    trained_modules: &[String],
    feedforward_modules: &[String],
) -> Value {
    peft_config(
        info,
        "IA3",
        [
            ("fan_in_fan_out", json!(false)),
            (
                "feedforward_modules",
                recorded_targets(&Some(method.feedforward()), feedforward_modules, info),
            ),
            ("init_ia3_weights", json!(true)),
            (
                "target_modules",
                recorded_targets(&method.target_modules, trained_modules, info),
            ),
        ],
    )
}

/// The `adapter_config.json` PEFT writes for prompt tuning with a table of `rows` rows of
/// width `token_dim` (docs/FORMATS.md §4): one row per virtual token, two on an
/// encoder-decoder model. `num_layers` and `num_attention_heads` are left null: PEFT fills
/// them in from the base model's config when it loads the adapter.
pub fn prompt_adapter_config(
    method: &MethodConfig,
    info: &ExportInfo,
    rows: usize,
    token_dim: usize,
) -> Value {
    let submodules = info.transformer_submodules();
    peft_config(
        info,
        "PROMPT_TUNING",
        [
            ("num_attention_heads", Value::Null),
            ("num_layers", Value::Null),
            ("num_transformer_submodules", json!(submodules)),
            ("num_virtual_tokens", json!(rows / submodules)),
            (
                "prompt_tuning_init",
                json!(method.prompt_tuning_init.as_str()),
            ),
            (
                "prompt_tuning_init_text",
                json!(method.prompt_tuning_init_text),
            ),
            ("token_dim", json!(token_dim)),
            ("tokenizer_kwargs", Value::Null),
            // PEFT requires a tokenizer for TEXT init: the base model's own.
            (
                "tokenizer_name_or_path",
                match method.prompt_tuning_init {
                    PromptInit::Text => json!(info.base_model),
                    _ => Value::Null,
                },
            ),
        ],
    )
}

/// The `adapter_config.json` PEFT writes for prefix tuning with `tokens` virtual tokens
/// (docs/FORMATS.md §2). The shape fields (`num_layers`, `num_attention_heads`, `token_dim`,
/// `encoder_hidden_size`) are left null: PEFT derives them from the base model's config when
/// it loads the adapter, grouped-query attention included.
pub fn prefix_adapter_config(info: &ExportInfo, tokens: usize) -> Value {
    peft_config(
        info,
        "PREFIX_TUNING",
        [
            ("encoder_hidden_size", Value::Null),
            ("num_attention_heads", Value::Null),
            ("num_layers", Value::Null),
            (
                "num_transformer_submodules",
                json!(info.transformer_submodules()),
            ),
            ("num_virtual_tokens", json!(tokens)),
            ("prefix_projection", json!(false)),
            ("token_dim", Value::Null),
        ],
    )
}

/// Writes a PEFT directory for the LoRA `tensors` (named `<module>.lora_{A,B}.weight`, with
/// DoRA also `<module>.lora_magnitude_vector`) or IA³ `tensors` (`<module>.ia3_l`).
pub fn write_peft_dir(
    dir: &Path,
    method: &MethodConfig,
    info: &ExportInfo,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    if !matches!(
        method.kind,
        MethodKind::Lora | MethodKind::Ia3 | MethodKind::PromptTuning | MethodKind::PrefixTuning
    ) {
        return Err(EngineError::config(
            "format",
            format!(
                "the PEFT format holds LoRA, DoRA, IA3, prompt- and prefix-tuning adapters; this run trained with `{}`",
                method.kind
            ),
        ));
    }
    let mut prompt_shape = None;
    let mut named = Vec::with_capacity(tensors.len());
    let (mut modules, mut feedforward) = (Vec::new(), Vec::new());
    for (name, t) in tensors {
        if let Some(m) = name.strip_suffix(".lora_A.weight") {
            modules.push(m.to_string());
        } else if let Some(m) = name.strip_suffix(".ia3_l") {
            modules.push(m.to_string());
            // A feed-forward module's vector scales its input: [1, in].
            if t.dims().first() == Some(&1) && t.dims().get(1).is_some_and(|&d| d > 1) {
                feedforward.push(m.to_string());
            }
        }
        if name == PROMPT_EMBEDDINGS {
            // PEFT saves the prompt encoder's table under this bare name.
            prompt_shape = Some(t.dims2()?);
            named.push((name.clone(), t.to_dtype(DType::F32)?));
        } else {
            let name = match info.multimodal_layers {
                Some(_) => Multimodal::stored_name(name),
                None => name.clone(),
            };
            named.push((format!("base_model.model.{name}"), t.to_dtype(DType::F32)?));
        }
    }
    let config = match (method.kind, prompt_shape) {
        (MethodKind::Ia3, _) => ia3_adapter_config(method, info, &modules, &feedforward),
        (MethodKind::PromptTuning, Some((rows, dim))) => {
            prompt_adapter_config(method, info, rows, dim)
        }
        (MethodKind::PrefixTuning, Some((tokens, _))) => prefix_adapter_config(info, tokens),
        (MethodKind::PromptTuning | MethodKind::PrefixTuning, None) => {
            return Err(EngineError::config(
                "format",
                "a prompt- or prefix-tuning export needs the `prompt_embeddings` tensor",
            ))
        }
        _ => adapter_config(method, info, &modules),
    };
    let config_text = serde_json::to_string_pretty(&config)
        .map_err(|e| EngineError::config("adapter_config", e.to_string()))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(
        &dir.join("adapter_model.safetensors"),
        &safetensors_bytes(&named, Some(metadata))?,
    )?;
    write_atomic(&dir.join("adapter_config.json"), config_text.as_bytes())?;
    Ok(())
}
