//! Freezing: train chosen weights fully and keep the rest fixed. Full fine-tuning is the
//! case where every weight is chosen.

use candle_core::Var;

use super::{MethodConfig, Trainables};
use crate::error::{EngineError, Result};
use crate::model::llama::BasePart;
use crate::model::{LlamaConfig, LlamaModel};
use crate::peft::target::layer_index;

/// Whether module path `module` is selected by `pattern` (equal, a prefix at a `.`, or a suffix after a `.`).
fn selects(pattern: &str, module: &str) -> bool {
    module == pattern
        || module.starts_with(&format!("{pattern}."))
        || module.ends_with(&format!(".{pattern}"))
}

/// The weight names the freeze method trains.
pub fn trainable_weight_names(cfg: &LlamaConfig, method: &MethodConfig) -> Result<Vec<String>> {
    if method.trainable_modules.is_empty() && method.trainable_last_layers == 0 {
        return Err(EngineError::config(
            "trainable_modules",
            "the freeze method needs trainable_modules (e.g. lm_head) or trainable_last_layers > 0",
        ));
    }
    if method.trainable_last_layers > cfg.num_hidden_layers {
        return Err(EngineError::config(
            "trainable_last_layers",
            format!(
                "{} exceeds the model's {} layers",
                method.trainable_last_layers, cfg.num_hidden_layers
            ),
        ));
    }
    let first_trained_layer = cfg.num_hidden_layers - method.trainable_last_layers;
    // A tied lm_head is the embedding matrix.
    let alias = |p: &str| {
        if p == "lm_head" && cfg.tie_word_embeddings {
            "model.embed_tokens".to_string()
        } else {
            p.to_string()
        }
    };
    let weights = cfg.weight_shapes();
    for pattern in &method.trainable_modules {
        let p = alias(pattern);
        if !weights
            .iter()
            .any(|(w, _)| selects(&p, w.rsplit_once('.').map(|x| x.0).unwrap_or(w)))
        {
            return Err(EngineError::config(
                "trainable_modules",
                format!("`{pattern}` matches no module of the model"),
            ));
        }
    }
    Ok(weights
        .into_iter()
        .map(|(w, _)| w)
        .filter(|w| {
            let module = w.rsplit_once('.').map(|x| x.0).unwrap_or(w);
            let by_layer = method.trainable_last_layers > 0
                && layer_index(module).is_some_and(|l| l >= first_trained_layer);
            by_layer
                || method
                    .trainable_modules
                    .iter()
                    .any(|p| selects(&alias(p), module))
        })
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
