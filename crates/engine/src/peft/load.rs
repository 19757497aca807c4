//! Loading a PEFT LoRA, DoRA or IA³ directory (`adapter_config.json` +
//! `adapter_model.safetensors`) onto a model, for generation, evaluation and resumed training.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use regex::Regex;
use serde::Deserialize;

use super::prompt::PROMPT_EMBEDDINGS;
use super::{
    lora_trainables, Ia3Scale, LoraAdapter, LoraSettings, LoraVars, TargetModules, Trainables,
};
use crate::error::{EngineError, Result};
use crate::model::load::read_safetensors;
use crate::model::multimodal::Multimodal;
use crate::model::t5::T5Model;
use crate::model::LlamaModel;

/// The fields of PEFT's adapter_config.json the studio uses; others are ignored, as PEFT does.
#[derive(Debug, Clone, Deserialize)]
pub struct PeftAdapterConfig {
    /// Must be `LORA`.
    pub peft_type: String,
    /// Default rank (per-module ranks come from the tensor shapes).
    #[serde(default = "eight")]
    pub r: usize,
    /// Default alpha.
    #[serde(default = "eight_f")]
    pub lora_alpha: f64,
    /// Input dropout (training only).
    #[serde(default)]
    pub lora_dropout: f64,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA: each module also has a `lora_magnitude_vector`.
    #[serde(default)]
    pub use_dora: bool,
    /// Per-module alpha overrides, keys matched as `(.*\.)?(key)$`.
    #[serde(default)]
    pub alpha_pattern: HashMap<String, f64>,
    /// The targets recorded at training time.
    pub target_modules: Option<TargetModules>,
    /// The base model the adapter was trained on.
    pub base_model_name_or_path: Option<String>,
    /// Prompt and prefix tuning: the virtual tokens used (a T5 prompt table holds twice as
    /// many rows).
    pub num_virtual_tokens: Option<usize>,
}

fn eight() -> usize {
    8
}

fn eight_f() -> f64 {
    8.0
}

/// A loaded tensor as a trainable variable on the model's device and dtype.
fn trainable(t: Tensor, dtype: candle_core::DType, device: &candle_core::Device) -> Result<Var> {
    Ok(Var::from_tensor(&t.to_device(device)?.to_dtype(dtype)?)?)
}

/// The tensors of one wrapped module in an adapter file.
#[derive(Default)]
struct ModuleTensors {
    a: Option<Tensor>,
    b: Option<Tensor>,
    magnitude: Option<Tensor>,
}

/// Strips PEFT's `base_model.model.` prefix and a stray adapter name (`.default`); in an
/// adapter of a multimodal model, names the module as the decoder does, and gives `None` for
/// the vision tower's modules (the decoder computes text alone: they change nothing).
fn module_key(key: &str, multimodal: bool) -> Option<String> {
    let key = key
        .strip_prefix("base_model.model.")
        .unwrap_or(key)
        .replace(".default.", ".")
        .replace(".default", "");
    match multimodal {
        true => Multimodal::text_name(&key),
        false => Some(key),
    }
}

/// Reads adapter_config.json from `dir`.
pub fn read_adapter_config(dir: &Path) -> Result<PeftAdapterConfig> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    let cfg: PeftAdapterConfig =
        serde_json::from_str(&text).map_err(|e| EngineError::bad_file(&path, e.to_string()))?;
    if !["LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING"].contains(&cfg.peft_type.as_str()) {
        return Err(EngineError::bad_file(
            &path,
            format!(
                "peft_type `{}` is not supported here; LORA (with DoRA), IA3, PROMPT_TUNING and PREFIX_TUNING are",
                cfg.peft_type
            ),
        ));
    }
    Ok(cfg)
}

/// Attaches the PEFT adapter in `dir` (LoRA, DoRA or IA³, as its config says) to `model`.
/// Returns the adapter's variables (named as in training) so that training can continue from
/// them. `dropout` overrides LoRA's configured dropout.
pub fn attach_adapter(
    model: &mut LlamaModel,
    dir: &Path,
    dropout: Option<f64>,
) -> Result<Trainables> {
    if dir.join("adapter.safetensors").is_file() {
        return attach_bottleneck(model, dir);
    }
    match read_adapter_config(dir)?.peft_type.as_str() {
        "IA3" => attach_ia3(model, dir),
        "PROMPT_TUNING" => attach_prompt(model, dir, false),
        "PREFIX_TUNING" => attach_prompt(model, dir, true),
        _ => attach_lora(model, dir, dropout),
    }
}

/// Removes every adapter from `model` (LoRA, DoRA, IA³, virtual tokens, prefixes, bottleneck
/// adapters), leaving the base model as loaded: the playground switches adapters this way
/// without reloading the base. Merged adapters are part of the weights and stay.
pub fn detach_adapters(model: &mut LlamaModel) {
    for lin in model.linears_mut() {
        lin.lora = None;
        lin.ia3 = None;
    }
    model.set_prompt(None);
    model.set_prefix(None);
    for layer in model.layer_adapters_mut().iter_mut() {
        *layer = Default::default();
    }
}

/// Attaches Houlsby or Pfeiffer adapters saved by the adapters library (or the studio):
/// `adapter_config.json` with the library's `config`, `adapter.safetensors`.
fn attach_bottleneck(model: &mut LlamaModel, dir: &Path) -> Result<Trainables> {
    use super::bottleneck::{self, Bottleneck, Site};
    let config_path = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
    let wrapper: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::bad_file(&config_path, e.to_string()))?;
    let cfg = &wrapper["config"];
    let name = wrapper["name"].as_str().ok_or_else(|| {
        EngineError::bad_file(
            &config_path,
            "has no adapter `name`; is it an adapters-library adapter?",
        )
    })?;
    let plain = |key: &str, want: serde_json::Value| cfg.get(key).is_none_or(|v| *v == want);
    let houlsby = match (cfg["mh_adapter"].as_bool(), cfg["non_linearity"].as_str(), cfg["original_ln_before"].as_bool()) {
        (Some(true), Some("swish"), Some(false)) => true,
        (Some(false), Some("relu"), Some(true)) => false,
        _ => {
            return Err(EngineError::bad_file(
                &config_path,
                "is a bottleneck configuration the studio does not implement; Houlsby (double_seq_bn) and Pfeiffer (seq_bn) are",
            ))
        }
    };
    let simple = plain("ln_before", false.into())
        && plain("ln_after", false.into())
        && plain("use_gating", false.into())
        && plain("is_parallel", false.into())
        && plain("phm_layer", false.into())
        && plain("scaling", 1.0.into());
    if !simple {
        return Err(EngineError::bad_file(
            &config_path,
            "uses layer norms, gating, parallel placement, PHM layers or a scaling other than 1.0, which the studio does not implement",
        ));
    }
    let weights_path = dir.join("adapter.safetensors");
    let mut tensors: HashMap<String, Tensor> = read_safetensors(&weights_path)?
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .strip_prefix("model.")
                .unwrap_or(&k)
                .replace(&format!(".adapters.{name}."), ".");
            (format!("model.{k}"), t)
        })
        .collect();
    let hidden = model.config().hidden_size;
    let (dtype, device) = (model.dtype(), model.device().clone());
    let mut out = Vec::new();
    for (l, layer) in model.layer_adapters_mut().iter_mut().enumerate() {
        for site in [Site::Attention, Site::Output] {
            let names: Vec<String> = bottleneck::PARTS
                .iter()
                .map(|p| bottleneck::tensor_name(l, site, p))
                .collect();
            let parts: Vec<Option<Tensor>> = names.iter().map(|n| tensors.remove(n)).collect();
            if parts.iter().all(Option::is_none) {
                continue;
            }
            let parts: Vec<Tensor> = parts.into_iter().collect::<Option<_>>().ok_or_else(|| {
                EngineError::bad_file(
                    &weights_path,
                    format!(
                        "layer {l} {}: some adapter tensors are missing",
                        site.module()
                    ),
                )
            })?;
            let width = parts[0].dim(0)?;
            let fits = parts[0].dims() == [width, hidden]
                && parts[1].dims() == [width]
                && parts[2].dims() == [hidden, width]
                && parts[3].dims() == [hidden];
            if !fits {
                return Err(EngineError::bad_file(
                    &weights_path,
                    format!("layer {l} {}: shapes do not fit a hidden size of {hidden}; the adapter was made for another base model", site.module()),
                ));
            }
            let vars = parts
                .into_iter()
                .map(|t| trainable(t, dtype, &device))
                .collect::<Result<Vec<Var>>>()?;
            layer.set(site, Bottleneck::from_vars(&vars, houlsby));
            out.extend(names.into_iter().zip(vars));
        }
    }
    if let Some(stray) = tensors.keys().next() {
        return Err(EngineError::bad_file(
            &weights_path,
            format!("tensor `{stray}` does not belong to this model's adapters"),
        ));
    }
    if out.is_empty() {
        return Err(EngineError::bad_file(
            &weights_path,
            "holds no adapter tensors",
        ));
    }
    Ok(out)
}

/// Prompt or prefix tuning's table from the adapter in `dir`, with rows of `width`, as a
/// variable on the model's `dtype` and `device`.
fn read_prompt(
    dir: &Path,
    width: usize,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<Var> {
    let weights_path = dir.join("adapter_model.safetensors");
    let mut tensors = read_safetensors(&weights_path)?;
    let t = tensors.remove(PROMPT_EMBEDDINGS).ok_or_else(|| {
        EngineError::bad_file(
            &weights_path,
            "lacks `prompt_embeddings`, the virtual tokens",
        )
    })?;
    if let Some(stray) = tensors.keys().next() {
        return Err(EngineError::bad_file(
            &weights_path,
            format!("tensor `{stray}` is not part of a prompt- or prefix-tuning adapter"),
        ));
    }
    if t.rank() != 2 || t.dim(1)? != width || t.dim(0)? == 0 {
        return Err(EngineError::bad_file(
            &weights_path,
            format!(
                "prompt_embeddings {:?} does not fit this model (rows of {width}); the adapter was made for another base model",
                t.dims()
            ),
        ));
    }
    trainable(t, dtype, device)
}

/// Attaches prompt tuning's virtual tokens (`prompt_embeddings` [tokens, hidden]) or, with
/// `prefix`, prefix tuning's keys and values ([tokens, layers·2·kv_heads·head_dim]).
fn attach_prompt(model: &mut LlamaModel, dir: &Path, prefix: bool) -> Result<Trainables> {
    let width = match prefix {
        true => super::prompt::prefix_width(model.config()),
        false => model.config().hidden_size,
    };
    let var = read_prompt(dir, width, model.dtype(), &model.device().clone())?;
    match prefix {
        true => model.set_prefix(Some(var.as_tensor().clone())),
        false => model.set_prompt(Some(var.as_tensor().clone())),
    }
    Ok(vec![(PROMPT_EMBEDDINGS.to_string(), var)])
}

/// Attaches a T5 prompt-tuning table (its first `num_virtual_tokens` rows go before the
/// source) or, with `prefix`, a prefix in PEFT's encoder-decoder layout.
fn attach_prompt_t5(
    model: &mut T5Model,
    dir: &Path,
    cfg: &PeftAdapterConfig,
    prefix: bool,
) -> Result<Trainables> {
    let (dtype, device) = (model.dtype(), model.device().clone());
    let var = match prefix {
        true => {
            let var = read_prompt(dir, model.config().prefix_width()?, dtype, &device)?;
            model.set_prefix(Some(var.as_tensor().clone()));
            var
        }
        false => {
            let var = read_prompt(dir, model.config().d_model, dtype, &device)?;
            let rows = var.dim(0)?;
            let tokens = cfg.num_virtual_tokens.unwrap_or(rows / 2);
            if tokens == 0 || tokens > rows {
                return Err(EngineError::bad_file(
                    dir.join("adapter_config.json"),
                    format!("num_virtual_tokens {tokens} does not fit the table's {rows} rows"),
                ));
            }
            model.set_prompt(Some(var.as_tensor().clone()), tokens);
            var
        }
    };
    Ok(vec![(PROMPT_EMBEDDINGS.to_string(), var)])
}

/// Attaches the IA³ adapter in `dir`: each `ia3_l` is [out, 1] (scales the output) or, for a
/// feed-forward module, [1, in] (scales the input).
fn attach_ia3(model: &mut LlamaModel, dir: &Path) -> Result<Trainables> {
    let (dtype, device) = (model.dtype(), model.device().clone());
    let multimodal = model.config().multimodal.is_some();
    attach_ia3_to(model.linears_mut(), dtype, &device, dir, multimodal)
}

/// The IA³ adapter in `dir` attached to the `linears` its module names name.
fn attach_ia3_to(
    linears: Vec<&mut crate::model::Linear>,
    dtype: candle_core::DType,
    device: &candle_core::Device,
    dir: &Path,
    multimodal: bool,
) -> Result<Trainables> {
    let weights_path = dir.join("adapter_model.safetensors");
    let tensors = read_safetensors(&weights_path)?;
    let mut linears: HashMap<String, &mut crate::model::Linear> =
        linears.into_iter().map(|l| (l.name.clone(), l)).collect();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let Some(k) = module_key(key, multimodal) else {
            continue;
        };
        let m = k.strip_suffix(".ia3_l").ok_or_else(|| {
            EngineError::bad_file(
                &weights_path,
                format!("tensor `{key}` is not an IA3 vector"),
            )
        })?;
        let lin = linears.get_mut(m).ok_or_else(|| {
            EngineError::bad_file(&weights_path, format!("module `{m}` does not exist in this base model; is the adapter for another model?"))
        })?;
        let t = &tensors[key];
        let feedforward = if t.dims() == [lin.out_features(), 1] {
            false
        } else if t.dims() == [1, lin.in_features()] {
            true
        } else {
            return Err(EngineError::bad_file(
                &weights_path,
                format!(
                    "module `{m}`: ia3_l {:?} fits neither its outputs [{}, 1] nor its inputs [1, {}]; the adapter was made for another base model",
                    t.dims(), lin.out_features(), lin.in_features()
                ),
            ));
        };
        let var = trainable(t.clone(), dtype, device)?;
        lin.ia3 = Some(Ia3Scale::from_var(&var, feedforward));
        out.push((format!("{m}.ia3_l"), var));
    }
    if out.is_empty() {
        return Err(EngineError::bad_file(&weights_path, "holds no IA3 vectors"));
    }
    Ok(out)
}

/// Attaches the LoRA (or DoRA) adapter in `dir` to `model`. Returns the adapter's variables
/// (named as in training) so that training can continue from them.
pub fn attach_lora(model: &mut LlamaModel, dir: &Path, dropout: Option<f64>) -> Result<Trainables> {
    let (dtype, device) = (model.dtype(), model.device().clone());
    let multimodal = model.config().multimodal.is_some();
    attach_lora_to(
        model.linears_mut(),
        dtype,
        &device,
        dir,
        dropout,
        multimodal,
    )
}

/// A PEFT LoRA (or DoRA), IA³, prompt- or prefix-tuning adapter for T5 (`task_type`
/// SEQ_2_SEQ_LM) attached to `model`; other kinds are refused by name.
pub fn attach_adapter_t5(
    model: &mut T5Model,
    dir: &Path,
    dropout: Option<f64>,
) -> Result<Trainables> {
    let cfg = read_adapter_config(dir)?;
    let (dtype, device) = (model.dtype(), model.device().clone());
    match cfg.peft_type.as_str() {
        "LORA" => attach_lora_to(model.linears_mut(), dtype, &device, dir, dropout, false),
        "IA3" => attach_ia3_to(model.linears_mut(), dtype, &device, dir, false),
        "PROMPT_TUNING" => attach_prompt_t5(model, dir, &cfg, false),
        "PREFIX_TUNING" => attach_prompt_t5(model, dir, &cfg, true),
        other => Err(EngineError::bad_file(
            dir.join("adapter_config.json"),
            format!("is a {other} adapter; for T5 the studio loads LoRA, IA3, prompt- and prefix-tuning adapters"),
        )),
    }
}

/// Removes every adapter from a T5 `model`.
pub fn detach_adapters_t5(model: &mut T5Model) {
    for lin in model.linears_mut() {
        lin.lora = None;
        lin.ia3 = None;
    }
    model.set_prompt(None, 0);
    model.set_prefix(None);
}

/// The LoRA adapter in `dir` attached to the `linears` its module names name.
fn attach_lora_to(
    linears: Vec<&mut crate::model::Linear>,
    dtype: candle_core::DType,
    device: &candle_core::Device,
    dir: &Path,
    dropout: Option<f64>,
    multimodal: bool,
) -> Result<Trainables> {
    let cfg = read_adapter_config(dir)?;
    if cfg.peft_type != "LORA" {
        return Err(EngineError::bad_file(
            dir.join("adapter_config.json"),
            format!("is a {} adapter, not LoRA", cfg.peft_type),
        ));
    }
    let weights_path = dir.join("adapter_model.safetensors");
    let tensors = read_safetensors(&weights_path)?;
    let mut by_module: HashMap<String, ModuleTensors> = HashMap::new();
    for (key, t) in tensors {
        let Some(k) = module_key(&key, multimodal) else {
            continue;
        };
        if let Some(m) = k.strip_suffix(".lora_A.weight") {
            by_module.entry(m.to_string()).or_default().a = Some(t);
        } else if let Some(m) = k.strip_suffix(".lora_B.weight") {
            by_module.entry(m.to_string()).or_default().b = Some(t);
        } else if let Some(m) = k.strip_suffix(".lora_magnitude_vector") {
            by_module.entry(m.to_string()).or_default().magnitude = Some(t);
        } else {
            return Err(EngineError::bad_file(
                &weights_path,
                format!("tensor `{key}` is not a LoRA A/B matrix or a DoRA magnitude"),
            ));
        }
    }
    let alpha_patterns: Vec<(Regex, f64)> = cfg
        .alpha_pattern
        .iter()
        .map(|(k, v)| Regex::new(&format!(r"^(.*\.)?({k})$")).map(|r| (r, *v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            EngineError::bad_file(
                dir.join("adapter_config.json"),
                format!("alpha_pattern: {e}"),
            )
        })?;
    let mut linears: HashMap<String, &mut crate::model::Linear> =
        linears.into_iter().map(|l| (l.name.clone(), l)).collect();
    let mut modules: Vec<String> = by_module.keys().cloned().collect();
    modules.sort();
    let mut out = Vec::new();
    for m in modules {
        let ModuleTensors { a, b, magnitude } = by_module.remove(&m).unwrap_or_default();
        let (Some(a), Some(b)) = (a, b) else {
            return Err(EngineError::bad_file(
                &weights_path,
                format!("module `{m}` lacks lora_A or lora_B"),
            ));
        };
        let lin = linears.get_mut(&m).ok_or_else(|| {
            EngineError::bad_file(&weights_path, format!("module `{m}` does not exist in this base model; is the adapter for another model?"))
        })?;
        let r = a.dim(0)?;
        if a.dims() != [r, lin.in_features()] || b.dims() != [lin.out_features(), r] {
            return Err(EngineError::bad_file(
                &weights_path,
                format!(
                    "module `{m}`: lora_A {:?} / lora_B {:?} do not fit a layer of {} → {}; the adapter was made for another base model",
                    a.dims(), b.dims(), lin.in_features(), lin.out_features()
                ),
            ));
        }
        let alpha = alpha_patterns
            .iter()
            .find(|(re, _)| re.is_match(&m))
            .map(|(_, v)| *v)
            .unwrap_or(cfg.lora_alpha);
        let magnitude = match (cfg.use_dora, magnitude) {
            (true, Some(v)) if v.dims() == [lin.out_features()] => Some(v),
            (true, Some(v)) => {
                return Err(EngineError::bad_file(
                    &weights_path,
                    format!(
                        "module `{m}`: lora_magnitude_vector {:?} does not fit a layer of {} outputs",
                        v.dims(),
                        lin.out_features()
                    ),
                ))
            }
            (true, None) => {
                return Err(EngineError::bad_file(
                    &weights_path,
                    format!("module `{m}` lacks lora_magnitude_vector, which DoRA (use_dora) needs"),
                ))
            }
            (false, Some(_)) => {
                return Err(EngineError::bad_file(
                    &weights_path,
                    format!("module `{m}` has a DoRA magnitude but adapter_config.json says use_dora is false"),
                ))
            }
            (false, None) => None,
        };
        let settings = LoraSettings {
            r,
            lora_alpha: alpha,
            lora_dropout: dropout.unwrap_or(cfg.lora_dropout),
            use_rslora: cfg.use_rslora,
            use_dora: cfg.use_dora,
        };
        let var = |t: Tensor| trainable(t, dtype, device);
        let vars = LoraVars {
            a: var(a)?,
            b: var(b)?,
            magnitude: magnitude.map(var).transpose()?,
        };
        lin.lora = Some(LoraAdapter::from_vars(&vars, &settings));
        out.extend(lora_trainables(&m, vars));
    }
    if out.is_empty() {
        return Err(EngineError::bad_file(
            &weights_path,
            "holds no LoRA tensors",
        ));
    }
    Ok(out)
}
