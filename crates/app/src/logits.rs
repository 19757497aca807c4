//! Logits of token ids, base model or with an adapter, written to a safetensors file: what the
//! interop harness compares with transformers + PEFT.

use std::path::Path;

use candle_core::{DType, Tensor};
use peft_studio_engine::device::default_device;
use peft_studio_engine::fsutil::{safetensors_bytes, write_atomic};
use peft_studio_engine::model::load::load_model_quantized;
use peft_studio_engine::model::ForwardCtx;
use peft_studio_engine::peft::load::attach_adapter;
use peft_studio_engine::EngineError;

use crate::error::Result;
use crate::models::resolve_model;
use crate::plan::Quantization;
use peft_studio_engine::model::t5::{is_t5, T5Model};
use peft_studio_engine::peft::load::attach_adapter_t5;

/// Refuses an id outside a vocabulary of `vocab` tokens, naming it.
fn within_vocabulary(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(EngineError::config(
            "ids",
            format!("{bad} is outside the vocabulary of {vocab}"),
        )
        .into()),
        None => Ok(()),
    }
}

/// Token ids written as `1,2,3`, or an error naming the one that is not an id.
pub fn parse_ids(ids: &str) -> Result<Vec<u32>> {
    Ok(ids
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| EngineError::config("ids", format!("`{s}` is not a token id")))
        })
        .collect::<std::result::Result<_, _>>()?)
}

/// Writes the logits `model` (with `adapter` attached, when given) computes for `ids` to `out`
/// as the tensor `logits` (`[tokens, vocabulary]`). For a T5, `ids` are the source and the
/// decoder reads its start token and then the same ids (`[tokens + 1, vocabulary]`).
pub fn write_logits(
    model: &Path,
    adapter: Option<&Path>,
    quantize: Option<Quantization>,
    ids: &[u32],
    out: &Path,
) -> Result<()> {
    let dir = resolve_model(model)?;
    let logits = match is_t5(&dir) {
        true => t5_logits(&dir, adapter, quantize, ids)?,
        false => decoder_logits(&dir, adapter, quantize, ids)?,
    };
    write_atomic(
        out,
        &safetensors_bytes(&[("logits".to_string(), logits)], None)?,
    )?;
    Ok(())
}

fn decoder_logits(
    dir: &Path,
    adapter: Option<&Path>,
    quantize: Option<Quantization>,
    ids: &[u32],
) -> Result<Tensor> {
    let device = default_device();
    let mut model = load_model_quantized(dir, DType::F32, &device, quantize)?;
    if let Some(adapter) = adapter {
        attach_adapter(&mut model, adapter, Some(0.0))?;
    }
    within_vocabulary(ids, model.config().vocab_size)?;
    let input = Tensor::new(ids, &device)?.unsqueeze(0)?;
    Ok(model
        .forward(&input, None, &ForwardCtx::eval())?
        .squeeze(0)?)
}

fn t5_logits(
    dir: &Path,
    adapter: Option<&Path>,
    quantize: Option<Quantization>,
    ids: &[u32],
) -> Result<Tensor> {
    let device = default_device();
    let mut model = T5Model::load_quantized(dir, DType::F32, &device, quantize)?;
    if let Some(adapter) = adapter {
        attach_adapter_t5(&mut model, adapter, Some(0.0))?;
    }
    within_vocabulary(ids, model.config().vocab_size)?;
    let source = Tensor::new(ids, &device)?.unsqueeze(0)?;
    let mask = Tensor::ones((1, ids.len()), DType::F32, &device)?;
    let decoder: Vec<u32> = std::iter::once(model.config().decoder_start_token_id)
        .chain(ids.iter().copied())
        .collect();
    let decoder = Tensor::new(decoder.as_slice(), &device)?.unsqueeze(0)?;
    Ok(model
        .forward(&source, &mask, &decoder, &ForwardCtx::eval())?
        .squeeze(0)?)
}
