//! A whole model (a base model, or one with its adapters merged in) as one GGUF file that
//! llama.cpp, Ollama and LM Studio load: the architecture's hyperparameters, the tokenizer
//! (`gguf_vocab`), and the weights under llama.cpp's names (docs/FORMATS.md §8), q/k rows
//! permuted for the `llama` architecture, in F32, F16 or one of llama.cpp's block formats
//! (norms and biases stay F32, as llama.cpp's converter keeps them).

use std::path::Path;
use std::str::FromStr;

use std::borrow::Cow;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use super::lora::gguf_architecture;
use super::vocab::tokenizer_metadata;
use super::write::{gguf_tensor, write_gguf};
use crate::error::{EngineError, Result};
use crate::model::gguf::tensors::{gguf_module, llama3_divisor, permute};
use crate::model::quantized::{self, Format, Quantization, QUANTIZATIONS};
use crate::model::{LlamaConfig, LlamaModel};
use crate::ops::SplitMix64;

/// The data type of a GGUF model's weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    /// 32-bit floats: exact.
    F32,
    /// 16-bit floats: half the size, what the converter writes by default.
    F16,
    /// One of llama.cpp's block formats (`q8_0`: a quarter of the size, near-lossless;
    /// `q4_k`: what Ollama's default tags hold), each matrix whose rows the blocks do not
    /// divide in the type llama.cpp's quantizer falls back to (`quantized::format_for`).
    Quantized(Quantization),
}

impl GgufType {
    /// The type a [rows, cols] matrix is written in.
    fn matrix_dtype(self, cols: usize) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Quantized(q) => match quantized::format_for(q.format(), cols) {
                Some(Format::Ggml(f)) => f,
                // NF4 is not a GGUF type (`from_str` refuses it); F16 where no block fits.
                _ => GgmlDType::F16,
            },
        }
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`, docs/QUANTIZED.md §4; k-quants in
    /// one type throughout are its `_S` variants).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Quantized(q) => match q {
                Quantization::Q4_0 => 2,
                Quantization::Q4_1 => 3,
                Quantization::Q8_0 => 7,
                Quantization::Q5_0 => 8,
                Quantization::Q5_1 => 9,
                Quantization::Q2K => 10,
                Quantization::Q3K => 11,
                Quantization::Q4K => 14,
                Quantization::Q5K => 16,
                Quantization::Q6K => 18,
                // Refused by `from_str`: GGUF has no NF4.
                Quantization::Nf4 => 1,
            },
        }
    }
}

impl FromStr for GgufType {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8" => Ok(Self::Quantized(Quantization::Q8_0)),
            other => match other.parse() {
                Ok(Quantization::Nf4) => Err(EngineError::config(
                    "gguf type",
                    "NF4 is bitsandbytes' format, not a GGUF type; for a 4-bit GGUF choose q4_k",
                )),
                Ok(q) => Ok(Self::Quantized(q)),
                Err(_) => {
                    let names: Vec<&str> = QUANTIZATIONS
                        .iter()
                        .filter(|q| **q != Quantization::Nf4)
                        .map(|q| q.name())
                        .collect();
                    Err(EngineError::config(
                        "gguf type",
                        format!(
                            "`{other}` is not supported; supported: f32, f16, {}",
                            names.join(", ")
                        ),
                    ))
                }
            },
        }
    }
}

/// The GGUF name of a transformers weight (`model.layers.0.self_attn.q_proj.weight` →
/// `blk.0.attn_q.weight`).
fn gguf_name(hf: &str, family: &crate::model::family::Family) -> Option<String> {
    match hf {
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let (module, suffix) = hf.rsplit_once('.')?;
    Some(format!("{}.{suffix}", gguf_module(module, family)?))
}

/// The hyperparameter keys llama.cpp reads for `arch`.
fn architecture_metadata(
    cfg: &LlamaConfig,
    arch: &str,
    name: &str,
    ty: GgufType,
) -> Vec<(String, Value)> {
    let u = |x: usize| Value::U32(x as u32);
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    let per_arch = [
        ("context_length", u(cfg.max_position_embeddings)),
        ("embedding_length", u(cfg.hidden_size)),
        ("block_count", u(cfg.num_hidden_layers)),
        ("feed_forward_length", u(cfg.intermediate_size)),
        ("attention.head_count", u(cfg.num_attention_heads)),
        ("attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("vocab_size", u(cfg.vocab_size)),
        ("rope.dimension_count", u(cfg.rotary_dim)),
        ("attention.key_length", u(cfg.head_dim)),
        ("attention.value_length", u(cfg.head_dim)),
    ];
    if let Some(w) = cfg.sliding_window {
        meta.push((format!("{arch}.attention.sliding_window"), u(w)));
    }
    if let Some(l) = &cfg.longrope {
        meta.push((
            format!("{arch}.rope.scaling.attn_factor"),
            Value::F32(l.attention_factor as f32),
        ));
        meta.push((
            format!("{arch}.rope.scaling.original_context_length"),
            u(l.original_max_position_embeddings),
        ));
    }
    // llama.cpp's rope scaling keys (convert_hf_to_gguf.py: `add_rope_scaling_type`,
    // `_factor`, `_orig_ctx_len`); it derives YaRN's ramp and attention factor itself.
    let scaling = match (&cfg.yarn, cfg.rope_linear_factor) {
        (Some(y), _) => Some(("yarn", y.factor, Some(y.original_max_position_embeddings))),
        (None, f) if f != 1.0 => Some(("linear", f, None)),
        _ => None,
    };
    if let Some((kind, factor, original)) = scaling {
        meta.push((
            format!("{arch}.rope.scaling.type"),
            Value::String(kind.into()),
        ));
        meta.push((
            format!("{arch}.rope.scaling.factor"),
            Value::F32(factor as f32),
        ));
        if let Some(o) = original {
            meta.push((format!("{arch}.rope.scaling.original_context_length"), u(o)));
        }
    }
    for (key, cap) in [
        ("attn_logit_softcapping", cfg.attn_softcap),
        ("final_logit_softcapping", cfg.final_softcap),
    ] {
        if let Some(cap) = cap {
            meta.push((format!("{arch}.{key}"), Value::F32(cap as f32)));
        }
    }
    meta.extend(
        per_arch
            .into_iter()
            .map(|(k, v)| (format!("{arch}.{k}"), v)),
    );
    meta
}

/// What llama.cpp's Gemma architectures assume instead of reading it (docs/FAMILIES.md):
/// every other layer sliding (gemma2) or every 6th global (gemma3), scores scaled by
/// `key_length^-½`, the local layers' rotary base 10,000. A model that differs would be
/// computed as another model there: refused, naming the setting.
fn check_llama_cpp_assumptions(cfg: &LlamaConfig, arch: &str) -> Result<()> {
    use crate::model::family::LayerKind;
    // llama.cpp's YaRN (ggml's `rope_yarn`) takes the ramp between 32 and 1 rotations,
    // rounded outwards, and the attention factor `1 + 0.1 · ln(factor)`.
    if let Some(y) = &cfg.yarn {
        let mscale = crate::model::config::Yarn::mscale(y.factor, 1.0);
        let default = y.beta_fast == 32.0
            && y.beta_slow == 1.0
            && y.truncate
            && (y.factor <= 1.0 || (y.attention_factor - mscale).abs() < 1e-6);
        if !default {
            return Err(EngineError::config(
                "rope_scaling",
                "llama.cpp's yarn takes beta_fast 32, beta_slow 1, truncation and the attention factor 0.1·ln(factor) + 1; this model sets others, so a GGUF of it would compute another model",
            ));
        }
    }
    let kinds = |sliding: &dyn Fn(usize) -> bool| -> Vec<LayerKind> {
        (0..cfg.num_hidden_layers)
            .map(|i| {
                if sliding(i) {
                    LayerKind::Sliding
                } else {
                    LayerKind::Full
                }
            })
            .collect()
    };
    let assumed = match arch {
        "gemma2" => kinds(&|i| i % 2 == 0),
        "gemma3" => kinds(&|i| !(i + 1).is_multiple_of(6)),
        _ => return Ok(()),
    };
    let refuse = |field: &str, what: &str| {
        Err(EngineError::config(
            field,
            format!("llama.cpp's {arch} assumes {what}; this model differs, so a GGUF of it would compute another model"),
        ))
    };
    if cfg.sliding_window.is_some() && cfg.layer_kinds != assumed {
        let pattern = if arch == "gemma2" {
            "every other layer sliding"
        } else {
            "every 6th layer global"
        };
        return refuse("layer_types", pattern);
    }
    if cfg.attention_scale != 1.0 / (cfg.head_dim as f64).sqrt() {
        return refuse("query_pre_attn_scalar", "scores scaled by head_dim^-1/2");
    }
    if arch == "gemma3" && cfg.local_rope_theta.is_some_and(|t| t != 10_000.0) {
        return refuse(
            "rope_local_base_freq",
            "a rotary base of 10,000 on sliding layers",
        );
    }
    Ok(())
}

/// Llama 3's rope scaling as llama.cpp stores it: one divisor per frequency.
fn rope_freqs(cfg: &LlamaConfig) -> Option<Tensor> {
    let s = cfg.rope_scaling.as_ref()?;
    let divisors: Vec<f32> = (0..cfg.head_dim / 2)
        .map(|i| {
            let freq = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64);
            llama3_divisor(
                freq,
                s.factor,
                s.low_freq_factor,
                s.high_freq_factor,
                s.original_max_position_embeddings as f64,
            ) as f32
        })
        .collect();
    let n = divisors.len();
    Tensor::from_vec(divisors, n, &candle_core::Device::Cpu).ok()
}

/// Writes `model` (its base weights as they are now: merge adapters first) with the
/// tokenizer of the folder `tokenizer_dir` to the GGUF file `out`.
pub fn write_gguf_model(
    model: &mut LlamaModel,
    tokenizer_dir: &Path,
    name: &str,
    ty: GgufType,
    out: &Path,
) -> Result<()> {
    // Quantized projections are written in the type asked for, from their numbers.
    model.dequantize_base()?;
    let cfg = model.config().clone();
    let arch = gguf_architecture(&cfg)?;
    check_llama_cpp_assumptions(&cfg, arch)?;
    let mut meta = architecture_metadata(&cfg, arch, name, ty);
    meta.extend(tokenizer_metadata(tokenizer_dir, cfg.vocab_size)?);
    let mut tensors = Vec::new();
    if let Some(freqs) = rope_freqs(&cfg) {
        tensors.push((
            "rope_freqs.weight".to_string(),
            gguf_tensor(&freqs, GgmlDType::F32)?,
        ));
    }
    if let Some(l) = &cfg.longrope {
        let names = crate::model::gguf::LONGROPE_TENSORS;
        for (name, factors) in names.into_iter().zip([&l.long_factor, &l.short_factor]) {
            let f: Vec<f32> = factors.iter().map(|&x| x as f32).collect();
            let n = f.len();
            let t = Tensor::from_vec(f, n, &Device::Cpu)?;
            tensors.push((name.to_string(), gguf_tensor(&t, GgmlDType::F32)?));
        }
    }
    for (hf, weight) in model.base_weights_mut() {
        let gguf = gguf_name(&hf, &cfg.family).ok_or_else(|| {
            EngineError::config("model", format!("weight `{hf}` has no llama.cpp name"))
        })?;
        let weight = match (arch, gguf.split('.').nth(2)) {
            ("llama", Some("attn_q")) => permute(weight, cfg.num_attention_heads)?,
            ("llama", Some("attn_k")) => permute(weight, cfg.num_key_value_heads)?,
            // llama.cpp stores Gemma's norms with the 1 of `1 + w` added.
            _ if hf.ends_with("norm.weight") && cfg.family.norm_offset != 0.0 => {
                (&*weight + cfg.family.norm_offset)?
            }
            _ => weight.clone(),
        };
        // Matrices take the chosen type; vectors stay F32, as llama.cpp's converter keeps them.
        let dtype = match weight.dims() {
            [_, cols] => ty.matrix_dtype(*cols),
            _ => GgmlDType::F32,
        };
        tensors.push((gguf, gguf_tensor(&weight, dtype)?));
    }
    write_gguf(out, &meta, &tensors)
}

/// Writes a GGUF model of the shape `cfg` describes with random weights (normal, std 0.02,
/// as transformers initialises Llama; norms 1) in `ty`, with the tokenizer of the folder
/// `tokenizer_dir`: models at the sizes people train, for benchmarks no fixture could ship.
/// Each matrix is drawn and quantized in parallel blocks of rows, never whole in f32.
pub fn write_random_gguf(
    cfg: &LlamaConfig,
    tokenizer_dir: &Path,
    ty: GgufType,
    seed: u64,
    out: &Path,
) -> Result<()> {
    use rayon::prelude::*;
    let arch = gguf_architecture(cfg)?;
    check_llama_cpp_assumptions(cfg, arch)?;
    let mut meta = architecture_metadata(cfg, arch, "random", ty);
    meta.extend(tokenizer_metadata(tokenizer_dir, cfg.vocab_size)?);
    let mut tensors = Vec::new();
    for (i, (hf, shape)) in cfg.weight_shapes().into_iter().enumerate() {
        let gguf = gguf_name(&hf, &cfg.family).ok_or_else(|| {
            EngineError::config("model", format!("weight `{hf}` has no llama.cpp name"))
        })?;
        let tensor = match shape[..] {
            [rows, cols] => {
                let dtype = ty.matrix_dtype(cols);
                const ROWS: usize = 256;
                let blocks: Vec<Vec<u8>> = (0..rows)
                    .step_by(ROWS)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .map(|r0| {
                        let n = ROWS.min(rows - r0);
                        let mut rng = SplitMix64::new(SplitMix64::mix(seed, (i << 32 | r0) as u64));
                        let values: Vec<f32> = (0..n * cols)
                            .map(|_| (rng.next_normal() * 0.02) as f32)
                            .collect();
                        let t = Tensor::from_vec(values, (n, cols), &Device::Cpu)?;
                        Ok(gguf_tensor(&t, dtype)?.data()?.into_owned())
                    })
                    .collect::<Result<_>>()?;
                let storage =
                    QStorage::from_data(Cow::Owned(blocks.concat()), &Device::Cpu, dtype)?;
                QTensor::new(storage, (rows, cols))?
            }
            _ => gguf_tensor(
                &Tensor::ones(shape, DType::F32, &Device::Cpu)?,
                GgmlDType::F32,
            )?,
        };
        tensors.push((gguf, tensor));
    }
    write_gguf(out, &meta, &tensors)
}
