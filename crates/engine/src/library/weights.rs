//! Checking a model folder without loading it: config, weight headers against the shapes
//! the config implies, and the tokenizer.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::DType;

use crate::error::{EngineError, Result};
use crate::model::config::LlamaConfig;
use crate::model::gguf::GgufModel;
use crate::model::load::{base_formats, stored_format, weight_files, weights_of, WeightFiles};
use crate::model::quantized::{self, BaseFormats, Quantization};
use crate::model::t5::T5Config;
use crate::tokenizer::TextTokenizer;

/// Safetensors headers larger than this are refused (real ones are well under 10 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// `(dtype, shape)` of every tensor in one safetensors file, from its header alone.
pub fn header(path: &Path) -> Result<HashMap<String, (String, Vec<usize>)>> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let size = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| EngineError::bad_file(path, "truncated: shorter than a safetensors header"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES || len + 8 > size {
        return Err(EngineError::bad_file(
            path,
            format!("corrupt safetensors header: it claims {len} bytes in a {size}-byte file"),
        ));
    }
    let mut text = vec![0u8; len as usize];
    file.read_exact(&mut text)
        .map_err(|e| EngineError::io(path, e))?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| EngineError::bad_file(path, format!("corrupt safetensors header: {e}")))?;
    let mut out = HashMap::new();
    for (name, info) in json {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .unwrap_or("?")
            .to_string();
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|s| {
                s.iter()
                    .filter_map(|d| d.as_u64())
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(end) = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64())
        {
            if end.saturating_add(len + 8) > size {
                return Err(EngineError::bad_file(
                    path,
                    format!("truncated: tensor `{name}` ends past the end of the file"),
                ));
            }
        }
        out.insert(name, (dtype, shape));
    }
    Ok(out)
}

/// [`base_formats`] as a `dtype` model on the CPU (`cpu`) holds them: a safetensors base's
/// frozen projections (`frozen`: every method but freeze and full) kept as stored where
/// [`stored_format`] says so, read from the files' headers. For the planner.
pub fn held_formats(
    cfg: &LlamaConfig,
    dir: &Path,
    quantize: Option<Quantization>,
    (dtype, cpu, frozen): (DType, bool, bool),
) -> Result<Option<BaseFormats>> {
    let formats = base_formats(dir, quantize)?;
    if formats.is_some() || !frozen {
        return Ok(formats);
    }
    let Ok(WeightFiles::Safetensors(files)) = weights_of(dir) else {
        return Ok(None);
    };
    // The first shard that holds a projection says how they are stored.
    let mut stored = None;
    for file in &files {
        let found = header(file)?.into_iter().find(|(name, (_, shape))| {
            cfg.text_tensor(name)
                .is_some_and(|n| quantized::covers(&n, shape))
        });
        if let Some((_, (ty, _))) = found {
            stored = match ty.as_str() {
                "BF16" => Some(DType::BF16),
                "F16" => Some(DType::F16),
                _ => None,
            };
            break;
        }
    }
    Ok(stored
        .and_then(|s| stored_format(s, dtype, cpu))
        .map(|projections| BaseFormats {
            projections,
            embeddings: None,
            head: None,
        }))
}

/// Every tensor of `expected` is among the `found` headers with the shape the config implies;
/// returns the storage type (`dtype` when given, else the first tensor's) and the number of
/// weights.
fn expected_shapes(
    dir: &Path,
    found: &HashMap<String, (String, Vec<usize>)>,
    expected: Vec<(String, Vec<usize>)>,
    mut dtype: String,
) -> Result<(String, u64)> {
    let mut parameters = 0u64;
    for (name, shape) in expected {
        let Some((d, s)) = found.get(&name) else {
            return Err(EngineError::bad_file(
                dir,
                format!("weights lack tensor `{name}`"),
            ));
        };
        if *s != shape {
            return Err(EngineError::bad_file(
                dir,
                format!("tensor `{name}` has shape {s:?}, config.json implies {shape:?}"),
            ));
        }
        if dtype.is_empty() {
            dtype.clone_from(d);
        }
        // Shapes equal the config's, whose sizes a hostile config.json may make absurd.
        let count = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| {
                EngineError::bad_file(dir, format!("tensor `{name}` is absurdly large"))
            })?;
        parameters = parameters.saturating_add(count);
    }
    Ok((dtype, parameters))
}

/// The weights of a multimodal checkpoint outside its text decoder (the vision tower, the
/// projector), counted from the files' headers: PEFT's "all params" includes them. 0 for any
/// other model, and for a folder without weight files (a config.json planned alone).
pub fn outside_decoder_parameters(config: &LlamaConfig, dir: &Path) -> Result<u64> {
    if config.multimodal.is_none() {
        return Ok(0);
    }
    let Ok(files) = weight_files(dir) else {
        return Ok(0);
    };
    let mut count = 0u64;
    for file in files {
        for (name, (_, shape)) in header(&file)? {
            if config.text_tensor(&name).is_none() {
                let n = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
                count = count.saturating_add(n.unwrap_or(u64::MAX));
            }
        }
    }
    Ok(count)
}

/// What a checked T5 folder holds.
pub struct T5FolderSummary {
    /// The validated configuration.
    pub config: T5Config,
    /// Weight storage type (the first tensor's).
    pub dtype: String,
    /// Number of weights.
    pub parameters: u64,
    /// Bytes of weight files.
    pub size_bytes: u64,
}

/// [`check_folder`] for a T5: config.json, every weight header against the shapes the config
/// implies, and the tokenizer, without loading a weight.
pub fn check_t5_folder(dir: &Path) -> Result<T5FolderSummary> {
    if !dir.is_dir() {
        return Err(EngineError::bad_file(dir, "model folder not found"));
    }
    let config = T5Config::from_path(dir)?;
    let (mut found, mut size_bytes) = (HashMap::new(), 0);
    for file in weight_files(dir)? {
        size_bytes += std::fs::metadata(&file)
            .map_err(|e| EngineError::io(&file, e))?
            .len();
        found.extend(header(&file)?);
    }
    let (dtype, parameters) = expected_shapes(dir, &found, config.weight_shapes(), String::new())?;
    TextTokenizer::load(dir, &[config.eos_token_id])?;
    Ok(T5FolderSummary {
        config,
        dtype,
        parameters,
        size_bytes,
    })
}

/// What a checked model folder holds.
pub struct FolderSummary {
    /// The validated configuration.
    pub config: LlamaConfig,
    /// Weight storage type (the first tensor's).
    pub dtype: String,
    /// Number of weights.
    pub parameters: u64,
    /// Bytes of weight files.
    pub size_bytes: u64,
}

/// Checks config.json, every weight file's header against the shapes the config implies,
/// and the tokenizer; the errors name the file and the tensor.
pub fn check_folder(dir: &Path) -> Result<FolderSummary> {
    if !dir.is_dir() {
        return Err(EngineError::bad_file(dir, "model folder not found"));
    }
    let config = LlamaConfig::from_path(&dir.join("config.json"))?;
    let mut found = HashMap::new();
    let mut size_bytes = 0;
    // A GGUF base is described by its projections' type (its embeddings often differ).
    let mut stored = None;
    let files = match weights_of(dir)? {
        WeightFiles::Safetensors(files) => files,
        WeightFiles::Gguf(path) => {
            // Opening checks every tensor against the file's own metadata.
            let gguf = GgufModel::open(&path)?;
            stored = gguf.projection_format().map(|f| f.to_string());
            found.extend(
                gguf.stored_types()
                    .into_iter()
                    .map(|(name, ty, shape)| (name, (ty, shape))),
            );
            size_bytes = std::fs::metadata(&path)
                .map_err(|e| EngineError::io(&path, e))?
                .len();
            Vec::new()
        }
    };
    for file in files {
        size_bytes += std::fs::metadata(&file)
            .map_err(|e| EngineError::io(&file, e))?
            .len();
        // A multimodal checkpoint's vision tensors are not the decoder's to check.
        found.extend(
            header(&file)?
                .into_iter()
                .filter_map(|(name, t)| Some((config.text_tensor(&name)?, t))),
        );
    }
    let (dtype, parameters) = expected_shapes(
        dir,
        &found,
        config.weight_shapes(),
        stored.unwrap_or_default(),
    )?;
    TextTokenizer::load(dir, &config.eos_token_ids)?;
    Ok(FolderSummary {
        config,
        dtype,
        parameters,
        size_bytes,
    })
}
