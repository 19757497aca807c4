//! A merged model as a Hugging Face folder: the base model's config, tokenizer files and chat
//! template as they are, and its weights (F32) with the adapters folded in — one
//! `model.safetensors`, or shards of at most 5 GB with `model.safetensors.index.json` as
//! transformers writes them — so that transformers, llama.cpp's converter and Ollama take it
//! as any other model.

use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};
use crate::fsutil::{write_atomic, write_safetensors_streaming};
use crate::model::llama::BasePart;
use crate::model::load::weight_files;
use crate::model::multimodal::{Multimodal, Naming};
use crate::model::t5::T5Model;
use crate::model::LlamaModel;
use crate::peft::merge::{check_mergeable, merged_weight};

/// The files of a model folder that travel unchanged into a merged copy.
const CARRIED_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// The largest shard transformers' `save_pretrained` writes by default (5 GB).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Writes `model` with its adapters folded into its weights (with the files of `base_dir`, the
/// folder it was loaded from) to `out`, in shards of at most `max_shard_bytes`; the model
/// itself is left as it is. Each weight is merged as it is written, so a quantized base is
/// never widened whole.
///
/// A multimodal base (`model::multimodal`) keeps its vision tower: the decoder's weights are
/// written under the base's names for them and every other tensor is copied over.
pub fn write_merged_model(
    model: &LlamaModel,
    base_dir: &Path,
    out: &Path,
    max_shard_bytes: usize,
) -> Result<()> {
    check_mergeable(model)?;
    // A multimodal base's files, mapped once for all the tensors copied from them.
    let maps = match model.config().multimodal {
        Some(_) => weight_files(base_dir)?
            .into_iter()
            .map(|path| map_file(&path).map(|map| (path, map)))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let files = maps
        .iter()
        .map(|(path, map)| {
            safetensors::SafeTensors::deserialize(map)
                .map(|st| (path.as_path(), st))
                .map_err(|e| {
                    EngineError::bad_file(path, format!("not a valid safetensors file: {e}"))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut parts: Vec<(String, Part)> = model
        .base_parts()
        .into_iter()
        .map(|(name, part)| (name, Part::Model(part)))
        .collect();
    if model.config().multimodal.is_some() {
        let (outside, naming) = outside_decoder(model, &files);
        for (name, _) in &mut parts {
            *name = Multimodal::stored_name_as(name, naming);
        }
        parts.extend(outside);
    }
    write_merged_parts(&parts, base_dir, out, max_shard_bytes)
}

/// One tensor of a merged model.
enum Part<'a> {
    /// The model's, its adapters folded in.
    Model(BasePart<'a>),
    /// Copied from the base's `file` as it is (a vision tower's).
    Stored {
        view: safetensors::tensor::TensorView<'a>,
        file: &'a Path,
    },
}

/// The tensors of the base's `files` that are not the decoder's, named as stored, and how the
/// files name the decoder's.
fn outside_decoder<'a>(
    model: &LlamaModel,
    files: &[(&'a Path, safetensors::SafeTensors<'a>)],
) -> (Vec<(String, Part<'a>)>, Naming) {
    let (mut out, mut decoder) = (Vec::new(), Vec::new());
    for (file, st) in files {
        for (name, view) in st.tensors() {
            if model.config().text_tensor(&name).is_some() {
                decoder.push(name);
            } else {
                out.push((name, Part::Stored { view, file }));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (out, Naming::of(decoder.iter().map(String::as_str)))
}

/// The safetensors file `path`, mapped.
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    // SAFETY: a read-only private mapping, only read (as `model::load` maps weights).
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))
}

/// [`write_merged_model`] for a T5 (LoRA, DoRA or IA³ folded in).
pub fn write_merged_t5(
    model: &T5Model,
    base_dir: &Path,
    out: &Path,
    max_shard_bytes: usize,
) -> Result<()> {
    model.check_mergeable()?;
    let parts: Vec<(String, Part)> = model
        .base_parts()
        .into_iter()
        .map(|(name, part)| (name, Part::Model(part)))
        .collect();
    write_merged_parts(&parts, base_dir, out, max_shard_bytes)
}

/// Writes the weights `parts` (adapters folded in as each is written) with the files of
/// `base_dir` to `out`.
fn write_merged_parts(
    parts: &[(String, Part)],
    base_dir: &Path,
    out: &Path,
    max_shard_bytes: usize,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| EngineError::io(out, e))?;
    for name in CARRIED_FILES {
        let src = base_dir.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| EngineError::io(&src, e))?;
            write_atomic(&out.join(name), &bytes)?;
        }
    }
    // Each weight is merged when it is written and dropped after it: a quantized base is
    // widened one layer at a time, never whole.
    let shape = |part: &Part| match part {
        Part::Model(BasePart::Tensor(t)) => t.dims().to_vec(),
        Part::Model(BasePart::Weight(w)) => vec![w.dims().0, w.dims().1],
        Part::Model(BasePart::Linear(l)) => vec![l.out_features(), l.in_features()],
        Part::Model(BasePart::Bias(l)) => vec![l.out_features()],
        Part::Stored { view, .. } => view.shape().to_vec(),
    };
    let merged = |name: &str, part: &Part| -> Result<Tensor> {
        Ok(match part {
            Part::Model(BasePart::Tensor(t)) => (*t).clone(),
            Part::Model(BasePart::Weight(w)) => w.dense()?.into_owned(),
            Part::Model(BasePart::Linear(l)) => merged_weight(l)?.0,
            Part::Model(BasePart::Bias(l)) => merged_weight(l)?.1.ok_or_else(|| {
                EngineError::config("merge", format!("`{}` lost its bias", l.name))
            })?,
            Part::Stored { view, file } => view
                .load(&candle_core::Device::Cpu)
                .map_err(|e| EngineError::bad_file(file, format!("tensor `{name}`: {e}")))?,
        })
    };
    let weights: Vec<(String, Vec<usize>)> =
        parts.iter().map(|(n, p)| (n.clone(), shape(p))).collect();
    let bytes_of = |shape: &Vec<usize>| shape.iter().product::<usize>() * 4;
    // Consecutive weights fill a shard until the next would overflow it.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut filled = 0;
    for (i, (_, shape)) in weights.iter().enumerate() {
        let bytes = bytes_of(shape);
        if filled > 0 && filled + bytes > max_shard_bytes {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += bytes;
        if let Some(shard) = shards.last_mut() {
            shard.push(i);
        }
    }
    let count = shards.len();
    let file_of = |k: usize| {
        if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", k + 1)
        }
    };
    let mut weight_map = serde_json::Map::new();
    for (k, members) in shards.iter().enumerate() {
        let shapes: Vec<(String, Vec<usize>)> =
            members.iter().map(|&i| weights[i].clone()).collect();
        write_safetensors_streaming(&out.join(file_of(k)), &shapes, |j| {
            let (name, part) = &parts[members[j]];
            Ok(merged(name, part)?.detach().to_dtype(DType::F32)?)
        })?;
        for (name, _) in &shapes {
            weight_map.insert(name.clone(), file_of(k).into());
        }
    }
    if count > 1 {
        let total: usize = weights.iter().map(|(_, shape)| bytes_of(shape)).sum();
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(
            &out.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)
                .map_err(|e| EngineError::config("index", e.to_string()))?
                .as_bytes(),
        )?;
    }
    Ok(())
}
