//! Loading a model from a Hugging Face folder: `config.json` plus `model.safetensors` or
//! shards listed in `model.safetensors.index.json`, or a GGUF file used as stored
//! (`model.gguf`, linked there by `models import`), with its projections kept quantized.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::gguf::GgufModel;
use super::llama::LlamaModel;
use super::quantized::{self, BaseFormats, Format, Quantization, QuantizedWeight};
use crate::error::{EngineError, Result};

pub use super::gguf::GGUF_WEIGHTS;

/// A model folder's weights: safetensors files, or one GGUF file used as stored.
pub enum WeightFiles {
    /// `model.safetensors`, or the shards of `model.safetensors.index.json`.
    Safetensors(Vec<PathBuf>),
    /// `model.gguf`.
    Gguf(PathBuf),
}

/// Where a model folder keeps its weights.
pub fn weights_of(dir: &Path) -> Result<WeightFiles> {
    let gguf = dir.join(GGUF_WEIGHTS);
    if gguf.exists() || gguf.is_symlink() {
        return Ok(WeightFiles::Gguf(gguf));
    }
    weight_files(dir).map(WeightFiles::Safetensors)
}

/// The safetensors files holding a model's weights, in load order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(EngineError::bad_file(
            dir,
            "no weights: expected model.safetensors or model.safetensors.index.json",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::bad_file(&index, e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EngineError::bad_file(&index, "no `weight_map` object"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            if f.contains("..") || f.contains('/') || f.contains('\\') {
                return Err(EngineError::bad_file(
                    &index,
                    format!("shard name `{f}` leaves the model folder"),
                ));
            }
            Ok(dir.join(f))
        })
        .collect()
}

/// The block formats a model's weights will be held in when it is loaded with `quantize`:
/// a GGUF base's own, else `quantize`'s for the projections; `None` when nothing is.
pub fn base_formats(dir: &Path, quantize: Option<Quantization>) -> Result<Option<BaseFormats>> {
    Ok(match weights_of(dir) {
        Ok(WeightFiles::Gguf(path)) => GgufModel::open(&path)?.formats(),
        _ => quantize.map(BaseFormats::projections),
    })
}

/// The type a frozen projection stored as `stored` is held in by a `dtype` model (on the CPU
/// when `cpu`), when not its dtype: an f32 model on the CPU keeps a bf16 or f16 file's
/// projections as stored (every such number is an f32, so the products, which widen the
/// weight as they read it, compute what a widened copy would) in half the memory. Hub checkpoints are
/// bf16; widened whole, a 1B model's weights alone were 4 GiB.
pub fn stored_format(stored: DType, dtype: DType, cpu: bool) -> Option<Format> {
    let kept = match stored {
        DType::BF16 => GgmlDType::BF16,
        DType::F16 => GgmlDType::F16,
        _ => return None,
    };
    (dtype == DType::F32 && cpu).then_some(Format::Ggml(kept))
}

/// Reads every tensor of one safetensors file onto the CPU.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| not_safetensors(path, e))
}

fn not_safetensors(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::bad_file(path, format!("not a valid safetensors file: {e}"))
}

/// Weights as a model is built from them: tensors, and projections kept quantized.
type Loaded = (HashMap<String, Tensor>, HashMap<String, QuantizedWeight>);

/// The tensors of one safetensors file in `dtype` on `device`, tensor by tensor: the file is
/// mapped, each tensor copied out and converted (and moved to a GPU at once), and the pages
/// it came from released from this process as soon as it is copied. Loading's peak is the
/// weights plus one tensor, not the file's bytes next to the weights. With `quantize`, the
/// decoder's projections are quantized from the file's values as they are read; without it,
/// `frozen` projections are held as [`stored_format`] says. Tensors
/// outside the decoder (a multimodal checkpoint's vision tower) are not read; the others get
/// the decoder's names.
fn read_safetensors_as(
    cfg: &LlamaConfig,
    path: &Path,
    dtype: DType,
    device: &Device,
    (quantize, frozen): (Option<Quantization>, bool),
    into: &mut Loaded,
) -> Result<()> {
    use candle_core::safetensors::Load;
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    // SAFETY: the mapping is read-only and private; a file changed on disk while it is read
    // gives wrong weights (as a plain read would), not undefined behaviour in this process's
    // own memory, which never aliases the mapping mutably.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| not_safetensors(path, e))?;
    let base = map.as_ptr() as usize;
    for (stored, view) in st.tensors() {
        let Some(name) = cfg.text_tensor(&stored) else {
            continue;
        };
        let t = view
            .load(&Device::Cpu)
            .map_err(|e| not_safetensors(path, e))?;
        let projection = quantized::covers(&name, t.dims());
        let format = match quantize {
            Some(q) => projection
                .then(|| quantized::format_for(q.format(), t.dims()[1]))
                .flatten(),
            None => (projection && frozen)
                .then(|| stored_format(t.dtype(), dtype, device.is_cpu()))
                .flatten(),
        };
        match format {
            Some(f) => {
                let q = QuantizedWeight::quantize(&t, f, dtype, device)?;
                into.1.insert(name, q);
            }
            None => {
                into.0.insert(name, t.to_dtype(dtype)?.to_device(device)?);
            }
        }
        let data = view.data();
        // SAFETY: DONTNEED on a read-only private file mapping only drops pages from this
        // process; a later read (a neighbouring tensor sharing the page) reloads them.
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                data.as_ptr() as usize - base,
                data.len(),
            )
        };
    }
    Ok(())
}

/// Loads config and weights from a model folder.
pub fn load_model(dir: &Path, dtype: DType, device: &Device) -> Result<LlamaModel> {
    load_model_quantized(dir, dtype, device, None)
}

/// [`load_model`], the decoder's projections of a safetensors base quantized to `quantize`
/// as they are read (a GGUF base keeps the types it stores).
pub fn load_model_quantized(
    dir: &Path,
    dtype: DType,
    device: &Device,
    quantize: Option<Quantization>,
) -> Result<LlamaModel> {
    load_model_held(dir, dtype, device, quantize, false)
}

/// [`load_model_quantized`] for a model whose projections stay frozen (`frozen`: every method
/// but freeze and full): without `quantize`, they are held as [`stored_format`] says.
pub fn load_model_held(
    dir: &Path,
    dtype: DType,
    device: &Device,
    quantize: Option<Quantization>,
    frozen: bool,
) -> Result<LlamaModel> {
    if !dir.is_dir() {
        return Err(EngineError::bad_file(dir, "model folder not found"));
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(EngineError::bad_file(
            &config_path,
            "missing: a model folder needs config.json",
        ));
    }
    let files = match weights_of(dir)? {
        WeightFiles::Gguf(path) => {
            if let Some(q) = quantize {
                return Err(EngineError::config(
                    "quantize",
                    format!(
                        "the base is the GGUF file {}, used with the types it stores; `{q}` \
                         applies to safetensors bases (leave it unset)",
                        path.display()
                    ),
                ));
            }
            let gguf = GgufModel::open(&path)?;
            let (dense, quantized) = gguf.weights_as_stored(dtype, device)?;
            let origin = path.display().to_string();
            return LlamaModel::from_tensors(
                &gguf.config,
                dense,
                quantized,
                &origin,
                dtype,
                device,
            );
        }
        WeightFiles::Safetensors(files) => files,
    };
    let cfg = LlamaConfig::from_path(&config_path)?;
    let mut loaded = (HashMap::new(), HashMap::new());
    for f in &files {
        read_safetensors_as(&cfg, f, dtype, device, (quantize, frozen), &mut loaded)?;
    }
    let origin = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    LlamaModel::from_tensors(&cfg, loaded.0, loaded.1, &origin, dtype, device)
}
