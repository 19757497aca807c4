//! Freezing: train chosen weights fully and keep the rest fixed. Full fine-tuning is the
//! case where every weight is chosen.

use candle_core::Var;

use super::{MethodConfig, Trainables};
use crate::error::{EngineError, Result};
use crate::model::llama::BasePart;
use crate::model::t5::{T5Config, T5Model};
use crate::model::{LlamaConfig, LlamaModel};
use crate::peft::target::layer_index;

/// Whether module path `module` is selected by `pattern` (equal, a prefix at a `.`, or a suffix after a `.`).
fn selects(pattern: &str, module: &str) -> bool {
    module == pattern
        || module.starts_with(&format!("{pattern}."))
        || module.ends_with(&format!(".{pattern}"))
}

/// The weight names the freeze method trains on a decoder-only model.
pub fn trainable_weight_names(cfg: &LlamaConfig, method: &MethodConfig) -> Result<Vec<String>> {
    // A tied lm_head is the embedding matrix.
    let tied =
        |p: &str| (p == "lm_head" && cfg.tie_word_embeddings).then_some("model.embed_tokens");
    select_weights(
        &cfg.weight_shapes(),
        method,
        |_| cfg.num_hidden_layers,
        cfg.num_hidden_layers,
        tied,
    )
}

/// The weight names the freeze method trains on a T5: `trainable_last_layers` counts the last
/// blocks of each stack (all of a shallower one).
pub fn trainable_weight_names_t5(cfg: &T5Config, method: &MethodConfig) -> Result<Vec<String>> {
    let depth = |module: &str| match module.starts_with("decoder.") {
        true => cfg.num_decoder_layers,
        false => cfg.num_layers,
    };
    // A tied head is the shared embedding.
    let tied = |p: &str| (p == "lm_head" && cfg.tie_word_embeddings).then_some("shared");
    select_weights(
        &cfg.weight_shapes(),
        method,
        depth,
        cfg.num_layers.max(cfg.num_decoder_layers),
        tied,
    )
}

/// The names among `weights` that `method` selects: under one of its `trainable_modules`
/// (`tied` names what a pattern stands for where a module is another's alias), or in one of
/// the last `trainable_last_layers` layers of the stack of `depth(module)` layers; `deepest`
/// bounds `trainable_last_layers`.
fn select_weights<'a>(
    weights: &[(String, Vec<usize>)],
    method: &MethodConfig,
    depth: impl Fn(&str) -> usize,
    deepest: usize,
    tied: impl Fn(&str) -> Option<&'a str>,
) -> Result<Vec<String>> {
    if method.trainable_modules.is_empty() && method.trainable_last_layers == 0 {
        return Err(EngineError::config(
            "trainable_modules",
            "the freeze method needs trainable_modules (e.g. lm_head) or trainable_last_layers > 0",
        ));
    }
    if method.trainable_last_layers > deepest {
        return Err(EngineError::config(
            "trainable_last_layers",
            format!(
                "{} exceeds the model's {deepest} layers",
                method.trainable_last_layers
            ),
        ));
    }
    let alias = |p: &str| tied(p).unwrap_or(p).to_string();
    let module_of = |w: &'_ str| w.rsplit_once('.').map(|x| x.0).unwrap_or(w).to_string();
    for pattern in &method.trainable_modules {
        let p = alias(pattern);
        if !weights.iter().any(|(w, _)| selects(&p, &module_of(w))) {
            return Err(EngineError::config(
                "trainable_modules",
                format!("`{pattern}` matches no module of the model"),
            ));
        }
    }
    let last = method.trainable_last_layers;
    Ok(weights
        .iter()
        .map(|(w, _)| w)
        .filter(|w| {
            let module = module_of(w);
            let by_layer =
                last > 0 && layer_index(&module).is_some_and(|l| l + last >= depth(&module));
            by_layer
                || method
                    .trainable_modules
                    .iter()
                    .any(|p| selects(&alias(p), &module))
        })
        .cloned()
        .collect())
}

/// Turns the named base weights into variables and returns them in model order.
pub fn make_trainable(model: &mut LlamaModel, names: &[String]) -> Result<Trainables> {
    refuse_quantized(model, names)?;
    let mut out = Vec::new();
    for (name, tensor) in model.base_weights_mut() {
        if names.contains(&name) {
            let var = Var::from_tensor(tensor)?;
            *tensor = var.as_tensor().clone();
            out.push((name, var));
        }
    }
    model.retie();
    Ok(out)
}

/// [`make_trainable`] for a T5 (held in its dtype, never quantized).
pub fn make_trainable_t5(model: &mut T5Model, names: &[String]) -> Result<Trainables> {
    let mut out = Vec::new();
    for (name, tensor) in model.base_weights_mut() {
        if names.contains(&name) {
            let var = Var::from_tensor(tensor)?;
            *tensor = var.as_tensor().clone();
            out.push((name, var));
        }
    }
    Ok(out)
}

/// A quantized weight holds rounded numbers in blocks no optimiser step can update, so
/// training one (a projection, or a GGUF base's embeddings) is refused, naming it.
fn refuse_quantized(model: &LlamaModel, names: &[String]) -> Result<()> {
    let held = model.base_parts().into_iter().find_map(|(name, part)| {
        let weight = match part {
            BasePart::Weight(w) => w,
            BasePart::Linear(l) => &l.weight,
            BasePart::Tensor(_) | BasePart::Bias(_) => return None,
        };
        let format = weight.quantized()?.format();
        names.contains(&name).then_some((name, format))
    });
    match held {
        Some((name, format)) => Err(EngineError::config(
            "quantize",
            format!(
                "`{name}` is held quantized ({format}), and trainable weights cannot be \
                 quantized; train an adapter (LoRA, DoRA, IA3, …) on a quantized base, or load \
                 the base unquantized (leave `quantize` unset, or import the GGUF with \
                 --convert) to train its weights"
            ),
        )),
        None => Ok(()),
    }
}
