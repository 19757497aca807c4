//! Methods on an encoder-decoder model (T5): LoRA (rsLoRA, DoRA) and IA³ on its projections,
//! matched by PEFT's module names and with PEFT's T5 defaults (LoRA: `q`, `v`; IA³: `k`, `v`,
//! `wo`, with `wo` feed-forward; `utils/constants.py`), prompt and prefix tuning in PEFT's
//! encoder-decoder layout (`model/t5/prompting.rs`), freeze and full fine-tuning. Bottleneck
//! adapters are refused by name until they exist for T5.

use super::prompt::{self, PROMPT_EMBEDDINGS};
use super::target::{self, select_modules, TargetModules};
use super::{freeze, init_lora, Ia3Scale, MethodConfig, MethodKind, Trainables};
use crate::error::{EngineError, Result};
use crate::model::t5::{prompt_rows, T5Config, T5Model};
use crate::ops::SplitMix64;
use crate::tokenizer::TextTokenizer;

fn list(names: &[&str]) -> TargetModules {
    TargetModules::List(names.iter().map(|s| s.to_string()).collect())
}

impl MethodConfig {
    /// This method with PEFT's T5 defaults written out where it leaves targets unset, as
    /// training and the exported `adapter_config.json` use them.
    pub fn with_t5_defaults(&self) -> Result<MethodConfig> {
        let (targets, feedforward) = match self.kind {
            MethodKind::Lora => (list(&target::LORA_T5_TARGETS), None),
            MethodKind::Ia3 => (
                list(&target::ia3_default_targets("t5").unwrap_or(["k", "v", "wo"])),
                Some(list(&target::IA3_T5_FEEDFORWARD)),
            ),
            MethodKind::PromptTuning | MethodKind::PrefixTuning => {
                self.validate_virtual_tokens()?;
                return Ok(self.clone());
            }
            MethodKind::Freeze | MethodKind::Full => return Ok(self.clone()),
            other => {
                let usable: Vec<&str> = MethodKind::ALL
                    .iter()
                    .filter(|k| k.on_encoder_decoder())
                    .map(|k| k.as_str())
                    .collect();
                return Err(EngineError::config(
                    "kind",
                    format!(
                        "{other} is not available for T5 yet; use {}",
                        usable.join(", ")
                    ),
                ));
            }
        };
        Ok(MethodConfig {
            target_modules: Some(self.target_modules.clone().unwrap_or(targets)),
            feedforward_modules: self.feedforward_modules.clone().or(feedforward),
            ..self.clone()
        })
    }

    /// The projections this method wraps on a T5 whose projections are named `names` (in
    /// the model's order), and among them those IA³ scales on their input; both as indices
    /// into `names`. Training and the planner both read it.
    pub fn t5_targets(&self, names: &[String]) -> Result<(Vec<usize>, Vec<usize>)> {
        let method = self.with_t5_defaults()?;
        if !matches!(self.kind, MethodKind::Lora | MethodKind::Ia3) {
            return Ok((Vec::new(), Vec::new()));
        }
        let targets = method.target_modules.clone().unwrap_or_default();
        let picked = select_modules(names, &targets, self.layers_to_transform.as_deref())?;
        let feedforward = match (self.kind, &method.feedforward_modules) {
            (MethodKind::Ia3, Some(ff)) => {
                let ff = select_modules(names, ff, None)?;
                if let Some(stray) = ff.iter().find(|i| !picked.contains(i)) {
                    return Err(EngineError::config(
                        "feedforward_modules",
                        format!("`{}` is not among the target modules; feed-forward modules must be targets too", names[*stray]),
                    ));
                }
                ff
            }
            _ => Vec::new(),
        };
        Ok((picked, feedforward))
    }

    /// The weights freeze and full fine-tuning train on a T5 described by `cfg` (none for
    /// the other methods).
    pub fn t5_trained_weights(&self, cfg: &T5Config) -> Result<Vec<String>> {
        match self.kind {
            MethodKind::Freeze => freeze::trainable_weight_names_t5(cfg, self),
            MethodKind::Full => Ok(cfg.weight_shapes().into_iter().map(|(n, _)| n).collect()),
            _ => Ok(Vec::new()),
        }
    }

    /// Wraps a T5 `model` with this method and returns what it trains; LoRA matrices and
    /// virtual tokens are initialised from `seed`, prompt tuning's TEXT initialisation
    /// reads the model's `tokenizer`.
    pub fn apply_t5(
        &self,
        model: &mut T5Model,
        seed: u64,
        tokenizer: Option<&TextTokenizer>,
    ) -> Result<Trainables> {
        let (dtype, device) = (model.dtype(), model.device().clone());
        match self.kind {
            MethodKind::PromptTuning => {
                self.validate_virtual_tokens()?;
                let text_ids = self.prompt_text_ids(tokenizer)?;
                let var = prompt::init_prompt(
                    prompt_rows(self.num_virtual_tokens),
                    self.prompt_tuning_init,
                    text_ids.as_deref(),
                    &*model,
                    seed,
                )?;
                model.set_prompt(Some(var.as_tensor().clone()), self.num_virtual_tokens);
                return Ok(vec![(PROMPT_EMBEDDINGS.to_string(), var)]);
            }
            MethodKind::PrefixTuning => {
                self.validate_virtual_tokens()?;
                let width = model.config().prefix_width()?;
                let var =
                    prompt::init_prefix(self.num_virtual_tokens, width, seed, dtype, &device)?;
                model.set_prefix(Some(var.as_tensor().clone()));
                return Ok(vec![(PROMPT_EMBEDDINGS.to_string(), var)]);
            }
            MethodKind::Freeze | MethodKind::Full => {
                let names = self.t5_trained_weights(model.config())?;
                return freeze::make_trainable_t5(model, &names);
            }
            _ => {}
        }
        let names: Vec<String> = model.linears().iter().map(|l| l.name.clone()).collect();
        let (picked, feedforward) = self.t5_targets(&names)?;
        let settings = self.lora();
        let mut out = Vec::new();
        for (i, lin) in model.linears_mut().into_iter().enumerate() {
            if !picked.contains(&i) {
                continue;
            }
            if self.kind == MethodKind::Lora {
                let seed = SplitMix64::mix(seed, i as u64);
                out.extend(init_lora(lin, &settings, seed, dtype, &device)?);
            } else {
                let ff = feedforward.contains(&i);
                let (scale, var) =
                    Ia3Scale::init(lin.in_features(), lin.out_features(), ff, dtype, &device)?;
                lin.ia3 = Some(scale);
                out.push((format!("{}.ia3_l", lin.name), var));
            }
        }
        Ok(out)
    }
}
