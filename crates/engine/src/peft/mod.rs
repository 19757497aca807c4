//! Parameter-efficient methods: which layers a method adapts (PEFT's targeting and defaults),
//! with what settings and initial values, loading and merging adapters. A method attaches the
//! adapter layers the model defines (`model::adapters`) to the model's layers in place (the
//! base model is never copied) and returns the named variables it trains; the model never
//! names a method.

pub mod freeze;
mod initial;
pub mod load;
pub mod merge;
pub mod prompt;
pub mod seq2seq;
pub mod target;

pub use crate::model::adapters::{bottleneck, ia3, lora};

use candle_core::Var;
use serde::{Deserialize, Serialize};

pub use ia3::Ia3Scale;
pub use lora::{LoraAdapter, LoraSettings, LoraVars};
pub use prompt::PromptInit;
pub use target::TargetModules;

use crate::error::{EngineError, Result};
use crate::model::{LlamaConfig, LlamaModel};
use crate::ops::SplitMix64;
use crate::tokenizer::TextTokenizer;

/// The training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// Low-rank adapters on the target modules; everything else frozen.
    #[default]
    Lora,
    /// IA³: learned vectors scaling the target modules' outputs (feed-forward: inputs).
    Ia3,
    /// Prompt tuning: learned virtual-token embeddings put before every input.
    #[serde(rename = "prompt-tuning")]
    PromptTuning,
    /// Prefix tuning: learned keys and values every layer's attention sees first.
    #[serde(rename = "prefix-tuning")]
    PrefixTuning,
    /// Houlsby bottleneck adapters (after attention and after the MLP; adapters library).
    Houlsby,
    /// Pfeiffer bottleneck adapters (after the MLP; adapters library).
    Pfeiffer,
    /// Train chosen modules fully; everything else frozen.
    Freeze,
    /// Train every weight (the baseline savings are measured against).
    Full,
}

impl MethodKind {
    /// Every method, in the order pickers list them.
    pub const ALL: [MethodKind; 8] = [
        Self::Lora,
        Self::Ia3,
        Self::PromptTuning,
        Self::PrefixTuning,
        Self::Houlsby,
        Self::Pfeiffer,
        Self::Freeze,
        Self::Full,
    ];

    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Ia3 => "ia3",
            Self::PromptTuning => "prompt-tuning",
            Self::PrefixTuning => "prefix-tuning",
            Self::Houlsby => "houlsby",
            Self::Pfeiffer => "pfeiffer",
            Self::Freeze => "freeze",
            Self::Full => "full",
        }
    }

    /// Whether the base's projections stay frozen (every method but freeze and full), so that
    /// the loader may hold them in another type (`model::load::load_model_held`).
    pub fn keeps_base_frozen(self) -> bool {
        !matches!(self, Self::Freeze | Self::Full)
    }

    /// Whether the method trains an encoder-decoder model (T5) too.
    pub fn on_encoder_decoder(self) -> bool {
        !matches!(self, Self::Houlsby | Self::Pfeiffer)
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MethodKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(Self::Lora),
            "ia3" => Ok(Self::Ia3),
            "prompt-tuning" | "prompt_tuning" => Ok(Self::PromptTuning),
            "prefix-tuning" | "prefix_tuning" => Ok(Self::PrefixTuning),
            "houlsby" => Ok(Self::Houlsby),
            "pfeiffer" => Ok(Self::Pfeiffer),
            "freeze" => Ok(Self::Freeze),
            "full" => Ok(Self::Full),
            other => Err(EngineError::config(
                "method",
                format!(
                    "`{other}` is unknown; use lora, ia3, prompt-tuning, prefix-tuning, houlsby, pfeiffer, freeze or full"
                ),
            )),
        }
    }
}

/// A method and its settings (the `[method]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    /// The method (`MethodKind`: lora, ia3, prompt-tuning, prefix-tuning, houlsby, pfeiffer, freeze or full).
    pub kind: MethodKind,
    /// LoRA rank.
    pub r: usize,
    /// LoRA scaling numerator (`s = lora_alpha / r`).
    pub lora_alpha: f64,
    /// Dropout on the LoRA input.
    pub lora_dropout: f64,
    /// rsLoRA scaling `lora_alpha / √r`.
    pub use_rslora: bool,
    /// DoRA: a learned magnitude per output row of each wrapped layer.
    pub use_dora: bool,
    /// Modules LoRA or IA³ wraps: names, a regex, or `all-linear` (default: PEFT's for the
    /// method, see [`MethodConfig::targets`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<TargetModules>,
    /// IA³: the targets whose input (not output) is scaled (default: `down_proj`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedforward_modules: Option<TargetModules>,
    /// Prompt tuning: how many virtual tokens.
    pub num_virtual_tokens: usize,
    /// Prompt tuning: how the virtual tokens start.
    pub prompt_tuning_init: PromptInit,
    /// Prompt tuning with TEXT init: the text whose token embeddings start the virtual tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tuning_init_text: Option<String>,
    /// Houlsby/Pfeiffer: the bottleneck is hidden / reduction_factor wide (default 16).
    pub reduction_factor: usize,
    /// Only wrap modules in these layers.
    pub layers_to_transform: Option<Vec<usize>>,
    /// Freeze: module paths (or suffixes) to train fully, e.g. `lm_head`, `model.norm`.
    pub trainable_modules: Vec<String>,
    /// Freeze: also train the last N decoder layers fully.
    pub trainable_last_layers: usize,
}

impl Default for MethodConfig {
    fn default() -> Self {
        let lora = LoraSettings::default();
        Self {
            kind: MethodKind::Lora,
            r: lora.r,
            lora_alpha: lora.lora_alpha,
            lora_dropout: lora.lora_dropout,
            use_rslora: lora.use_rslora,
            use_dora: lora.use_dora,
            target_modules: None,
            feedforward_modules: None,
            num_virtual_tokens: 20,
            reduction_factor: 16,
            prompt_tuning_init: PromptInit::Random,
            prompt_tuning_init_text: None,
            layers_to_transform: None,
            trainable_modules: Vec::new(),
            trainable_last_layers: 0,
        }
    }
}

/// The variables a method trains, in a fixed order, with the names they are saved under.
pub type Trainables = Vec<(String, Var)>;

/// A fresh LoRA adapter (PEFT's initialisation from `seed`) attached to `lin`; its variables
/// under PEFT's names.
pub(crate) fn init_lora(
    lin: &mut crate::model::Linear,
    settings: &LoraSettings,
    seed: u64,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<Trainables> {
    let (ad, vars) = LoraAdapter::init(&lin.weight, settings, seed, dtype, device)?;
    lin.lora = Some(ad);
    Ok(lora_trainables(&lin.name, vars))
}

/// An adapter's variables under the names PEFT saves them with (without its
/// `base_model.model.` prefix).
pub fn lora_trainables(module: &str, vars: LoraVars) -> Trainables {
    let mut out = vec![
        (format!("{module}.lora_A.weight"), vars.a),
        (format!("{module}.lora_B.weight"), vars.b),
    ];
    if let Some(m) = vars.magnitude {
        out.push((format!("{module}.lora_magnitude_vector"), m));
    }
    out
}

/// Full module paths of a config's linear layers, in the order `LlamaModel::linears` lists them.
pub fn linear_module_names(cfg: &LlamaConfig) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        for (name, fan_in, fan_out, _) in cfg.block_linears() {
            out.push((format!("model.layers.{l}.{name}"), fan_in, fan_out));
        }
    }
    out.push(("lm_head".to_string(), cfg.hidden_size, cfg.vocab_size));
    out
}

impl MethodConfig {
    /// The LoRA settings of this config.
    pub fn lora(&self) -> LoraSettings {
        LoraSettings {
            r: self.r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            use_dora: self.use_dora,
        }
    }

    /// Checks the settings against the model's config.
    pub fn validate(&self, cfg: &LlamaConfig) -> Result<()> {
        if let Some(layers) = &self.layers_to_transform {
            if let Some(bad) = layers.iter().find(|&&l| l >= cfg.num_hidden_layers) {
                return Err(EngineError::config(
                    "layers_to_transform",
                    format!(
                        "layer {bad} does not exist; the model has {} layers",
                        cfg.num_hidden_layers
                    ),
                ));
            }
        }
        match self.kind {
            MethodKind::Lora => {
                self.lora().validate()?;
                self.lora_targets(cfg).map(|_| ())
            }
            MethodKind::Ia3 => self.ia3_targets(cfg).map(|_| ()),
            MethodKind::PromptTuning | MethodKind::PrefixTuning => self.validate_virtual_tokens(),
            MethodKind::Houlsby | MethodKind::Pfeiffer
                if self.reduction_factor == 0 || self.reduction_factor > cfg.hidden_size =>
            {
                Err(EngineError::config(
                    "reduction_factor",
                    format!(
                        "{} is not between 1 and the hidden size {}",
                        self.reduction_factor, cfg.hidden_size
                    ),
                ))
            }
            MethodKind::Houlsby | MethodKind::Pfeiffer => Ok(()),
            MethodKind::Freeze => freeze::trainable_weight_names(cfg, self).map(|_| ()),
            MethodKind::Full => Ok(()),
        }
    }

    /// Prompt and prefix tuning's own settings, whatever the model.
    pub fn validate_virtual_tokens(&self) -> Result<()> {
        if self.num_virtual_tokens == 0 {
            return Err(EngineError::config(
                "num_virtual_tokens",
                "prompt and prefix tuning need at least one virtual token",
            ));
        }
        if self.kind == MethodKind::PromptTuning
            && self.prompt_tuning_init == PromptInit::Text
            && self
                .prompt_tuning_init_text
                .as_deref()
                .is_none_or(|t| t.trim().is_empty())
        {
            return Err(EngineError::config(
                "prompt_tuning_init_text",
                "TEXT initialisation needs a text (e.g. a description of the task)",
            ));
        }
        Ok(())
    }

    /// The tokens of `prompt_tuning_init_text` where prompt tuning starts from a text
    /// (with the special tokens the tokenizer adds, as PEFT's `tokenizer(text)`).
    pub fn prompt_text_ids(&self, tokenizer: Option<&TextTokenizer>) -> Result<Option<Vec<u32>>> {
        match (self.prompt_tuning_init, &self.prompt_tuning_init_text) {
            (PromptInit::Text, Some(text)) => Ok(Some(
                tokenizer
                    .ok_or_else(|| {
                        EngineError::config(
                            "prompt_tuning_init",
                            "TEXT initialisation needs the model's tokenizer",
                        )
                    })?
                    .encode(text, true)?,
            )),
            _ => Ok(None),
        }
    }

    /// The target modules: as configured, or PEFT's default for `model_type`.
    pub fn targets(&self, model_type: &str) -> TargetModules {
        match (&self.target_modules, self.kind) {
            (Some(t), _) => t.clone(),
            (None, MethodKind::Ia3) => TargetModules::List(
                target::ia3_default_targets(model_type)
                    .into_iter()
                    .flatten()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            (None, _) => TargetModules::default(),
        }
    }

    /// IA³'s feed-forward modules: as configured, or PEFT's default (`down_proj`).
    pub fn feedforward(&self) -> TargetModules {
        self.feedforward_modules.clone().unwrap_or_else(|| {
            TargetModules::List(
                target::IA3_DEFAULT_FEEDFORWARD
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        })
    }

    /// The modules IA³ scales, as `(path, in, out, feedforward)`. Feed-forward modules must be
    /// among the targets, as PEFT requires.
    pub fn ia3_targets(&self, cfg: &LlamaConfig) -> Result<Vec<(String, usize, usize, bool)>> {
        let targets = self.lora_targets(cfg)?;
        let names: Vec<String> = targets.iter().map(|(n, _, _)| n.clone()).collect();
        let all_names: Vec<String> = linear_module_names(cfg)
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        let ff: Vec<String> = target::select_modules(&all_names, &self.feedforward(), None)?
            .into_iter()
            .map(|i| all_names[i].clone())
            .collect();
        if let Some(stray) = ff.iter().find(|f| !names.contains(f)) {
            return Err(EngineError::config(
                "feedforward_modules",
                format!("`{stray}` is not among the target modules; feed-forward modules must be targets too"),
            ));
        }
        Ok(targets
            .into_iter()
            .map(|(n, i, o)| {
                let is_ff = ff.contains(&n);
                (n, i, o, is_ff)
            })
            .collect())
    }

    /// The linear modules the method wraps (LoRA, IA³), as `(path, in, out)`.
    pub fn lora_targets(&self, cfg: &LlamaConfig) -> Result<Vec<(String, usize, usize)>> {
        let all = linear_module_names(cfg);
        let names: Vec<String> = all.iter().map(|(n, _, _)| n.clone()).collect();
        let picked = target::select_modules(
            &names,
            &self.targets(&cfg.model_type),
            self.layers_to_transform.as_deref(),
        )?;
        Ok(picked.into_iter().map(|i| all[i].clone()).collect())
    }

    /// Wraps `model` with this method and returns what it trains. LoRA matrices are
    /// initialised from `seed`.
    pub fn apply(&self, model: &mut LlamaModel, seed: u64) -> Result<Trainables> {
        self.apply_with(model, seed, None)
    }

    /// [`MethodConfig::apply`] with the model's tokenizer, which prompt tuning's TEXT
    /// initialisation needs.
    pub fn apply_with(
        &self,
        model: &mut LlamaModel,
        seed: u64,
        tokenizer: Option<&TextTokenizer>,
    ) -> Result<Trainables> {
        self.validate(model.config())?;
        match self.kind {
            MethodKind::Lora => {
                let targets = self.lora_targets(model.config())?;
                let settings = self.lora();
                let (dtype, device) = (model.dtype(), model.device().clone());
                let mut out = Vec::new();
                for (i, lin) in model.linears_mut().into_iter().enumerate() {
                    if !targets.iter().any(|(n, _, _)| *n == lin.name) {
                        continue;
                    }
                    out.extend(init_lora(
                        lin,
                        &settings,
                        SplitMix64::mix(seed, i as u64),
                        dtype,
                        &device,
                    )?);
                }
                Ok(out)
            }
            MethodKind::Ia3 => {
                let targets = self.ia3_targets(model.config())?;
                let (dtype, device) = (model.dtype(), model.device().clone());
                let mut out = Vec::new();
                for lin in model.linears_mut() {
                    let Some((_, _, _, ff)) = targets.iter().find(|t| t.0 == lin.name) else {
                        continue;
                    };
                    let (scale, var) =
                        Ia3Scale::init(lin.in_features(), lin.out_features(), *ff, dtype, &device)?;
                    lin.ia3 = Some(scale);
                    out.push((format!("{}.ia3_l", lin.name), var));
                }
                Ok(out)
            }
            MethodKind::PromptTuning => {
                let text_ids = self.prompt_text_ids(tokenizer)?;
                let var = prompt::init_prompt(
                    self.num_virtual_tokens,
                    self.prompt_tuning_init,
                    text_ids.as_deref(),
                    &*model,
                    seed,
                )?;
                model.set_prompt(Some(var.as_tensor().clone()));
                Ok(vec![(prompt::PROMPT_EMBEDDINGS.to_string(), var)])
            }
            MethodKind::PrefixTuning => {
                let width = prompt::prefix_width(model.config());
                let var = prompt::init_prefix(
                    self.num_virtual_tokens,
                    width,
                    seed,
                    model.dtype(),
                    &model.device().clone(),
                )?;
                model.set_prefix(Some(var.as_tensor().clone()));
                Ok(vec![(prompt::PROMPT_EMBEDDINGS.to_string(), var)])
            }
            MethodKind::Houlsby | MethodKind::Pfeiffer => {
                let houlsby = self.kind == MethodKind::Houlsby;
                let hidden = model.config().hidden_size;
                let width = bottleneck::width(hidden, self.reduction_factor);
                let (dtype, device) = (model.dtype(), model.device().clone());
                let mut out = Vec::new();
                for (l, layer) in model.layer_adapters_mut().iter_mut().enumerate() {
                    for (k, site) in bottleneck::sites(houlsby).iter().enumerate() {
                        let seed = SplitMix64::mix(seed, (2 * l + k) as u64);
                        let (adapter, vars) = bottleneck::Bottleneck::init(
                            hidden, width, houlsby, seed, dtype, &device,
                        )?;
                        layer.set(*site, adapter);
                        for (part, var) in bottleneck::PARTS.iter().zip(vars) {
                            out.push((bottleneck::tensor_name(l, *site, part), var));
                        }
                    }
                }
                Ok(out)
            }
            MethodKind::Freeze => {
                let names = freeze::trainable_weight_names(model.config(), self)?;
                freeze::make_trainable(model, &names)
            }
            MethodKind::Full => {
                let names: Vec<String> = model
                    .config()
                    .weight_shapes()
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                freeze::make_trainable(model, &names)
            }
        }
    }
}
