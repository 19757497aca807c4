//! A merged model as a Hugging Face folder: the base model's config and tokenizer files as
//! they are, and `model.safetensors` (F32) holding every base weight with the adapters folded
//! in, so that transformers, llama.cpp's converter and Ollama take it as any other model.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};
use crate::fsutil::{write_atomic, write_safetensors_streaming};
use crate::model::LlamaModel;
use crate::peft::merge::merge_adapters;

/// The files of a model folder that travel unchanged into a merged copy.
const CARRIED_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Merges `model`'s adapters into its weights and writes the merged model (with the files of
/// `base_dir`, the folder it was loaded from) to `out`.
pub fn write_merged_model(model: &mut LlamaModel, base_dir: &Path, out: &Path) -> Result<()> {
    merge_adapters(model)?;
    std::fs::create_dir_all(out).map_err(|e| EngineError::io(out, e))?;
    for name in CARRIED_FILES {
        let src = base_dir.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| EngineError::io(&src, e))?;
            write_atomic(&out.join(name), &bytes)?;
        }
    }
    let weights: Vec<(String, Tensor)> = model
        .base_weights_mut()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let shapes: Vec<(String, Vec<usize>)> = weights
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    write_safetensors_streaming(&out.join("model.safetensors"), &shapes, |i| {
        Ok(weights[i].1.detach().to_dtype(DType::F32)?)
    })
}
