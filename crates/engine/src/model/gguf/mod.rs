//! Importing GGUF files (llama.cpp, Ollama, LM Studio) as transformers-layout models:
//! configuration from the metadata, f32 weights in transformers' names and row order, and
//! the tokenizer rebuilt from its metadata.

pub mod meta;
pub mod tensors;
pub mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::Tensor;

use super::config::LlamaConfig;
use crate::error::{EngineError, Result};
use crate::fsutil::{safetensors_bytes, write_atomic};
use meta::Metadata;

/// A GGUF model read into memory in transformers' layout.
pub struct GgufModel {
    /// The file it came from.
    pub path: PathBuf,
    /// `config.json` as transformers would write it.
    pub config_json: serde_json::Value,
    /// The validated configuration.
    pub config: LlamaConfig,
    /// Dequantised f32 weights under transformers' names.
    pub tensors: HashMap<String, Tensor>,
    /// `tokenizer.json` and `tokenizer_config.json`.
    pub tokenizer: vocab::GgufTokenizer,
}

/// Reads the header of a GGUF file, with errors that name the file.
fn read_content(path: &Path, file: &mut std::fs::File) -> Result<Content> {
    Content::read(file).map_err(|e| {
        let text = e.to_string();
        let hint = if text.contains("magic") {
            "not a GGUF file (wrong magic number)".to_string()
        } else if text.contains("unknown dtype") {
            format!("uses a tensor type this version cannot read ({text})")
        } else if text.contains("failed to fill whole buffer") || text.contains("remaining") {
            format!("truncated or corrupt GGUF header ({text})")
        } else {
            format!("not a readable GGUF file: {text}")
        };
        EngineError::bad_file(path, hint)
    })
}

impl GgufModel {
    /// Reads and dequantises a GGUF file; `progress(done, total)` is called per tensor.
    pub fn read(path: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        let content = read_content(path, &mut file)?;
        let meta = Metadata::new(path, &content.metadata);
        let (arch, _) = meta.architecture()?;
        let tokenizer = vocab::tokenizer(&meta)?;
        let heads = meta.count(&format!("{arch}.attention.head_count"))?;
        let kv_heads = match meta.uint(&format!("{arch}.attention.head_count_kv"))? {
            Some(_) => meta.count(&format!("{arch}.attention.head_count_kv"))?,
            None => heads,
        };

        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let total = names.len();
        let mut tensors = HashMap::new();
        let mut rope_divisors = None;
        for (done, name) in names.into_iter().enumerate() {
            let read = |file: &mut std::fs::File| {
                tensors::dequantized(&content, file, name)
                    .map_err(|e| EngineError::bad_file(path, format!("tensor `{name}`: {e}")))
            };
            if name == "rope_freqs.weight" {
                rope_divisors = Some(read(&mut file)?.flatten_all()?.to_vec1::<f32>()?);
                continue;
            }
            let Some(hf) = tensors::hf_name(name) else {
                return Err(EngineError::bad_file(
                    path,
                    format!("tensor `{name}` is not part of a {arch} model this version reads"),
                ));
            };
            let mut t = read(&mut file)?;
            // llama.cpp's `llama` rope pairs adjacent dimensions; transformers pairs halves.
            if arch == "llama" && hf.contains(".self_attn.q_proj.") {
                t = tensors::unpermute(&t, heads)?;
            } else if arch == "llama" && hf.contains(".self_attn.k_proj.") {
                t = tensors::unpermute(&t, kv_heads)?;
            }
            tensors.insert(hf, t);
            progress(done + 1, total);
        }

        let tied = !tensors.contains_key("lm_head.weight");
        let rope_scaling = match rope_divisors {
            None => None,
            Some(divisors) => {
                let cfg = meta.config_json(tied, None)?;
                let num = |k: &str| cfg.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
                let found = tensors::llama3_scaling(
                    &divisors,
                    num("head_dim") as usize,
                    num("rope_theta"),
                    num("max_position_embeddings") as usize,
                );
                Some(found.ok_or_else(|| {
                    EngineError::bad_file(
                        path,
                        "`rope_freqs.weight` does not match Llama 3 rope scaling; this rope scaling is not supported",
                    )
                })?)
            }
        };
        let config_json = meta.config_json(tied, rope_scaling)?;
        let config = LlamaConfig::from_json(&config_json.to_string()).map_err(|e| {
            EngineError::bad_file(path, format!("its hyper-parameters are not usable: {e}"))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            config_json,
            config,
            tensors,
            tokenizer,
        })
    }

    /// The tokenizer, ready to use.
    pub fn text_tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        tokenizers::Tokenizer::from_bytes(self.tokenizer.tokenizer_json.to_string().as_bytes())
            .map_err(|e| {
                EngineError::bad_file(&self.path, format!("its tokenizer could not be built: {e}"))
            })
    }

    /// Writes a Hugging Face model folder (config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json) that transformers and the studio both load.
    pub fn write_hf_folder(&self, dir: &Path) -> Result<()> {
        // Check the tokenizer before anything is written.
        self.text_tokenizer()?;
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        let mut named: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_atomic(
            &dir.join("model.safetensors"),
            &safetensors_bytes(&named, Some(metadata))?,
        )?;
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
}
