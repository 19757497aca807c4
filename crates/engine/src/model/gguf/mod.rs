//! Importing GGUF files (llama.cpp, Ollama, LM Studio) as transformers-layout models:
//! configuration from the metadata, f32 weights in transformers' names and row order, and
//! the tokenizer rebuilt from its metadata. Tensors are dequantised one at a time, so a
//! conversion needs the memory of one tensor, not of the model.

pub mod meta;
mod scan;
pub mod tensors;
pub mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::quantized::{self, BaseFormats, Format, QuantizedWeight};
use crate::error::{EngineError, Result};
use crate::fsutil::{write_atomic, write_safetensors_streaming};
use meta::Metadata;

/// The GGUF file a model folder uses as stored, in place of safetensors weights.
pub const GGUF_WEIGHTS: &str = "model.gguf";

/// How an imported GGUF model keeps its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWeights {
    /// The file itself, linked into the model folder and used with the types it stores.
    AsStored,
    /// Dequantised into an f32 `model.safetensors`.
    Converted,
}

/// A GGUF model whose header has been read; tensors are read on demand.
pub struct GgufModel {
    /// The file it came from.
    pub path: PathBuf,
    /// `config.json` as transformers would write it.
    pub config_json: serde_json::Value,
    /// The validated configuration.
    pub config: LlamaConfig,
    /// `tokenizer.json` and `tokenizer_config.json`.
    pub tokenizer: vocab::GgufTokenizer,
    content: Content,
    arch: String,
    /// (GGUF name, transformers name, shape), sorted by transformers name.
    weights: Vec<(String, String, Vec<usize>)>,
}

/// llama.cpp's tensors of Phi-3's LongRoPE factors: long, then short.
pub const LONGROPE_TENSORS: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];

/// Reads the header of a GGUF file, with errors that name the file.
pub fn read_content(path: &Path, file: &mut std::fs::File) -> Result<Content> {
    // candle's reader divides by `general.alignment` unchecked; a hostile 0 must not abort us.
    EngineError::contain_panic(path, "corrupt GGUF header (invalid alignment)", || {
        Content::read(file).map_err(|e| gguf_error(path, e))
    })
}

/// Refuses a file whose tensors end past its end (a cut download): a model used as stored
/// reads its tensors only when it is loaded, so its import must check this itself.
fn check_extents(path: &Path, file: &std::fs::File, content: &Content) -> Result<()> {
    let size = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
    for (name, info) in &content.tensor_infos {
        let bytes = Format::Ggml(info.ggml_dtype).bytes(info.shape.elem_count() as u64);
        let end = (content.tensor_data_offset)
            .saturating_add(info.offset)
            .saturating_add(bytes);
        if end > size {
            return Err(EngineError::bad_file(
                path,
                format!("truncated: tensor `{name}` ends at byte {end} of a {size}-byte file"),
            ));
        }
    }
    Ok(())
}

/// Names the first tensor whose type candle cannot read, and what to do about it.
fn unknown_type(path: &Path) -> String {
    let readable = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];
    let found = std::fs::File::open(path)
        .ok()
        .and_then(|mut f| scan::tensor_types(&mut std::io::BufReader::new(&mut f)))
        .and_then(|types| types.into_iter().find(|(_, t)| !readable.contains(t)));
    let supported = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";
    let fix = "convert it with llama.cpp's llama-quantize (e.g. to Q4_K_M or Q8_0), or use \
               another quantization of the model";
    match found {
        Some((name, ty)) => format!(
            "tensor `{name}` is stored as {}, a type this version cannot read (it reads \
             {supported}); {fix}",
            scan::type_name(ty)
        ),
        None => {
            format!("uses a tensor type this version cannot read (it reads {supported}); {fix}")
        }
    }
}

/// A candle GGUF error as the studio words it.
fn gguf_error(path: &Path, e: candle_core::Error) -> EngineError {
    let text = e.to_string();
    let hint = if text.contains("magic") {
        "not a GGUF file (wrong magic number)".to_string()
    } else if text.contains("unknown dtype") {
        unknown_type(path)
    } else if text.contains("failed to fill whole buffer") || text.contains("remaining") {
        format!("truncated or corrupt GGUF header ({text})")
    } else {
        format!("not a readable GGUF file: {text}")
    };
    EngineError::bad_file(path, hint)
}

impl GgufModel {
    /// Reads the header: configuration, tokenizer and the tensor list, all checked.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        let content = read_content(path, &mut file)?;
        let meta = Metadata::new(path, &content.metadata);
        let (arch, class) = meta.architecture()?;
        let family = super::family::family(class).ok_or_else(|| {
            EngineError::bad_file(path, format!("architecture `{arch}` has no family"))
        })?;
        let tokenizer = vocab::tokenizer(&meta)?;
        let mut weights = Vec::new();
        for (name, info) in &content.tensor_infos {
            if name == "rope_freqs.weight" || LONGROPE_TENSORS.contains(&name.as_str()) {
                continue;
            }
            let hf = tensors::hf_name(name, &family).ok_or_else(|| {
                EngineError::bad_file(
                    path,
                    format!("tensor `{name}` is not part of a {arch} model this version reads"),
                )
            })?;
            weights.push((name.clone(), hf, info.shape.dims().to_vec()));
        }
        weights.sort_by(|a, b| a.1.cmp(&b.1));
        check_extents(path, &file, &content)?;
        let tied = !weights.iter().any(|w| w.1 == "lm_head.weight");
        let rope_freqs = content.tensor_infos.get("rope_freqs.weight");
        if rope_freqs.is_some_and(|info| info.shape.dims().iter().any(|&d| d > 1 << 16)) {
            return Err(EngineError::bad_file(
                path,
                "`rope_freqs.weight` has an absurd shape",
            ));
        }
        let mut config_json = meta.config_json(tied)?;
        if rope_freqs.is_some() {
            let divisors = tensors::dequantized(&content, &mut file, "rope_freqs.weight")
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| {
                    EngineError::bad_file(path, format!("tensor `rope_freqs.weight`: {e}"))
                })?;
            let num = |k: &str| config_json.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
            let scaling = tensors::llama3_scaling(
                &divisors,
                num("head_dim") as usize,
                num("rope_theta"),
                num("max_position_embeddings") as usize,
            )
            .ok_or_else(|| {
                EngineError::bad_file(
                    path,
                    "`rope_freqs.weight` does not match Llama 3 rope scaling; this rope scaling is not supported",
                )
            })?;
            config_json["rope_scaling"] = scaling;
        }
        // Phi-3's LongRoPE factors are tensors in llama.cpp's files.
        let mut factors = |name: &str| -> Result<Option<Vec<f32>>> {
            match content.tensor_infos.get(name) {
                None => Ok(None),
                Some(info) if info.shape.elem_count() > 1 << 16 => Err(EngineError::bad_file(
                    path,
                    format!("`{name}` has an absurd shape"),
                )),
                Some(_) => tensors::dequantized(&content, &mut file, name)
                    .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                    .map(Some)
                    .map_err(|e| EngineError::bad_file(path, format!("tensor `{name}`: {e}"))),
            }
        };
        if let (Some(long), Some(short)) =
            (factors(LONGROPE_TENSORS[0])?, factors(LONGROPE_TENSORS[1])?)
        {
            let mut scaling = serde_json::json!({
                "type": "longrope", "long_factor": long, "short_factor": short,
            });
            if let Some(f) = meta.float(&format!("{arch}.rope.scaling.attn_factor"))? {
                scaling["attention_factor"] = serde_json::json!(f);
            }
            config_json["rope_scaling"] = scaling;
        }
        let config = LlamaConfig::from_json(&config_json.to_string()).map_err(|e| {
            EngineError::bad_file(path, format!("its hyper-parameters are not usable: {e}"))
        })?;
        // The tensors must be exactly those the config implies, with their shapes, before
        // any is read: an unexpected one would be written out unchecked.
        let found: HashMap<&str, &Vec<usize>> =
            weights.iter().map(|(_, hf, s)| (hf.as_str(), s)).collect();
        let implied = config.weight_shapes();
        if let Some((extra, _, _)) = weights
            .iter()
            .find(|(_, hf, _)| !implied.iter().any(|(n, _)| n == hf))
        {
            return Err(EngineError::bad_file(
                path,
                format!(
                    "tensor `{extra}` is not part of a {arch} model with these hyper-parameters"
                ),
            ));
        }
        for (name, shape) in implied {
            match found.get(name.as_str()) {
                Some(s) if **s == shape => {}
                Some(s) => {
                    return Err(EngineError::bad_file(
                        path,
                        format!(
                            "tensor for `{name}` has shape {s:?}, the metadata implies {shape:?}"
                        ),
                    ))
                }
                None => {
                    return Err(EngineError::bad_file(
                        path,
                        format!("no tensor for `{name}`"),
                    ))
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            config_json,
            config,
            tokenizer,
            content,
            arch,
            weights,
        })
    }

    /// One weight, dequantised to f32 and in transformers' row order and values.
    fn weight(&self, file: &mut std::fs::File, gguf: &str, hf: &str) -> Result<Tensor> {
        let t = tensors::dequantized(&self.content, file, gguf)
            .map_err(|e| EngineError::bad_file(&self.path, format!("tensor `{gguf}`: {e}")))?;
        // llama.cpp stores Gemma's norms with the 1 of `1 + w` added (its converter's
        // `data_torch + 1`); transformers' loader takes it off again (`Gemma2TensorProcessor`).
        let offset = self.config.family.norm_offset;
        if offset != 0.0 && hf.ends_with("norm.weight") {
            return Ok((t - offset)?);
        }
        // llama.cpp's `llama` rope pairs adjacent dimensions; transformers pairs halves.
        if self.arch != "llama" {
            Ok(t)
        } else if hf.contains(".self_attn.q_proj.") {
            tensors::unpermute(&t, self.config.num_attention_heads)
        } else if hf.contains(".self_attn.k_proj.") {
            tensors::unpermute(&t, self.config.num_key_value_heads)
        } else {
            Ok(t)
        }
    }

    /// The order transformers' rows of `hf` take from the file's (llama.cpp's `llama` rope
    /// pairs adjacent dimensions of q and k; transformers pairs halves), or `None` when the
    /// rows are in the same order.
    fn row_order(&self, hf: &str, rows: usize) -> Result<Option<Vec<usize>>> {
        let heads = if self.arch != "llama" {
            return Ok(None);
        } else if hf.contains(".self_attn.q_proj.") {
            self.config.num_attention_heads
        } else if hf.contains(".self_attn.k_proj.") {
            self.config.num_key_value_heads
        } else {
            return Ok(None);
        };
        let index: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        let index = Tensor::from_vec(index, (rows, 1), &candle_core::Device::Cpu)?;
        let order = tensors::unpermute(&index, heads)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Some(order.into_iter().map(|r| r as usize).collect()))
    }

    /// Every weight for a model used as stored: matrices (the projections, the embeddings and
    /// the LM head) kept in their block format (rows in transformers' order), vectors and
    /// F32 matrices in `dtype`, all on `device`, one tensor at a time.
    pub fn weights_as_stored(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<(HashMap<String, Tensor>, HashMap<String, QuantizedWeight>)> {
        let mut file =
            std::fs::File::open(&self.path).map_err(|e| EngineError::io(&self.path, e))?;
        let (mut dense, mut quantized) = (HashMap::new(), HashMap::new());
        for (gguf, hf, shape) in &self.weights {
            let stored = self.content.tensor_infos.get(gguf).map(|i| i.ggml_dtype);
            let blocks = match stored {
                Some(GgmlDType::F32) | None => None,
                Some(_) if shape.len() != 2 => None,
                Some(_) => Some(self.content.tensor(&mut file, gguf, &Device::Cpu).map_err(
                    |e| EngineError::bad_file(&self.path, format!("tensor `{gguf}`: {e}")),
                )?),
            };
            match blocks {
                Some(blocks) => {
                    let blocks = match self.row_order(hf, shape[0])? {
                        Some(order) => quantized::reorder_rows(&blocks, &order)?,
                        None => blocks,
                    };
                    let blocks = quantized::onto(blocks, device)?;
                    quantized.insert(hf.clone(), QuantizedWeight::from_blocks(blocks, dtype)?);
                }
                None => {
                    let t = self.weight(&mut file, gguf, hf)?;
                    dense.insert(hf.clone(), t.to_dtype(dtype)?.to_device(device)?);
                }
            }
        }
        Ok((dense, quantized))
    }

    /// The block formats the file holds its weights in, when its projections are quantized.
    pub fn formats(&self) -> Option<BaseFormats> {
        let stored = |hf: &str| {
            let (gguf, _, _) = self.weights.iter().find(|w| w.1 == hf)?;
            let info = self.content.tensor_infos.get(gguf)?;
            (info.ggml_dtype != GgmlDType::F32).then_some(Format::Ggml(info.ggml_dtype))
        };
        Some(BaseFormats {
            projections: self.projection_format()?,
            embeddings: stored("model.embed_tokens.weight"),
            head: stored("lm_head.weight"),
        })
    }

    /// The type most of the decoder's projections are stored in (`Q4_K`; a Q4_K_M file
    /// keeps some in Q6_K), if they are quantized at all.
    pub fn projection_format(&self) -> Option<Format> {
        quantized::most_common(self.weights.iter().filter_map(|(gguf, hf, shape)| {
            let ty = self.content.tensor_infos.get(gguf)?.ggml_dtype;
            (quantized::covers(hf, shape) && ty != GgmlDType::F32).then_some(Format::Ggml(ty))
        }))
    }

    /// Every weight's transformers name, the type the file stores it in (`Q4_K`) and its
    /// shape.
    pub fn stored_types(&self) -> Vec<(String, String, Vec<usize>)> {
        self.weights
            .iter()
            .map(|(gguf, hf, shape)| {
                let ty = self
                    .content
                    .tensor_infos
                    .get(gguf)
                    .map_or_else(String::new, |i| quantized::ggml_name(i.ggml_dtype));
                (hf.clone(), ty, shape.clone())
            })
            .collect()
    }

    /// Every weight under its transformers name; `progress(done, total)` per tensor.
    pub fn tensors(
        &self,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<HashMap<String, Tensor>> {
        let mut file =
            std::fs::File::open(&self.path).map_err(|e| EngineError::io(&self.path, e))?;
        let mut out = HashMap::new();
        for (done, (gguf, hf, _)) in self.weights.iter().enumerate() {
            out.insert(hf.clone(), self.weight(&mut file, gguf, hf)?);
            progress(done + 1, self.weights.len());
        }
        Ok(out)
    }

    /// The tokenizer, ready to use.
    pub fn text_tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        tokenizers::Tokenizer::from_bytes(self.tokenizer.tokenizer_json.to_string().as_bytes())
            .map_err(|e| {
                EngineError::bad_file(&self.path, format!("its tokenizer could not be built: {e}"))
            })
    }

    /// Writes a model folder with config.json, tokenizer.json and tokenizer_config.json, and
    /// the weights as `weights` says: the GGUF file linked as `model.gguf` (used as stored,
    /// no copy of the weights), or dequantised into `model.safetensors` one tensor at a time
    /// (a folder transformers loads too).
    pub fn write_hf_folder(
        &self,
        dir: &Path,
        weights: GgufWeights,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        // Check the tokenizer before anything is written.
        self.text_tokenizer()?;
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        match weights {
            GgufWeights::AsStored => self.link_into(dir)?,
            GgufWeights::Converted => self.convert_into(dir, progress)?,
        }
        let pretty = |v: &serde_json::Value| {
            serde_json::to_vec_pretty(v).map_err(|e| EngineError::config("json", e.to_string()))
        };
        write_atomic(
            &dir.join("tokenizer.json"),
            &pretty(&self.tokenizer.tokenizer_json)?,
        )?;
        write_atomic(
            &dir.join("tokenizer_config.json"),
            &pretty(&self.tokenizer.tokenizer_config)?,
        )?;
        // config.json last: a folder without it is never mistaken for a complete model.
        write_atomic(&dir.join("config.json"), &pretty(&self.config_json)?)
    }

    /// Links the file into `dir` as `model.gguf`: a hard link where the file system allows
    /// one (the weights stay even if the original is deleted), else a symbolic link.
    fn link_into(&self, dir: &Path) -> Result<()> {
        let link = dir.join(GGUF_WEIGHTS);
        let _ = std::fs::remove_file(&link);
        let original = self
            .path
            .canonicalize()
            .map_err(|e| EngineError::io(&self.path, e))?;
        if std::fs::hard_link(&original, &link).is_ok() {
            return Ok(());
        }
        #[cfg(unix)]
        let linked = std::os::unix::fs::symlink(&original, &link);
        #[cfg(windows)]
        let linked = std::os::windows::fs::symlink_file(&original, &link);
        linked.map_err(|e| EngineError::io(&link, e))
    }

    /// Writes `model.safetensors` with every weight dequantised to f32.
    fn convert_into(&self, dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
        let mut file =
            std::fs::File::open(&self.path).map_err(|e| EngineError::io(&self.path, e))?;
        let shapes: Vec<(String, Vec<usize>)> = self
            .weights
            .iter()
            .map(|(_, hf, s)| (hf.clone(), s.clone()))
            .collect();
        let total = self.weights.len();
        let mut done = 0;
        write_safetensors_streaming(&dir.join("model.safetensors"), &shapes, |index| {
            let (gguf, hf, _) = &self.weights[index];
            let t = self.weight(&mut file, gguf, hf)?;
            done += 1;
            progress(done, total);
            Ok(t)
        })
    }
}
