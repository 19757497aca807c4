//! GGUF tensors to transformers tensors: names, dequantisation and the Q/K row order.

use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::model::family::Family;

/// GGUF block tensor names and their transformers names below `model.layers.{i}.`
/// (docs/FORMATS.md §8; docs/FAMILIES.md for the q/k norms).
const BLOCK_NAMES: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
];

/// Phi-3's fused projections (llama.cpp's `phi3`: `ffn_up` holds gate and up, gate first).
const FUSED_NAMES: &[(&str, &str)] = &[
    ("attn_qkv", "self_attn.qkv_proj"),
    ("ffn_up", "mlp.gate_up_proj"),
];

/// The MLP's norms: Llama's one, called `post_attention_layernorm` in transformers.
const LLAMA_NORMS: &[(&str, &str)] = &[("ffn_norm", "post_attention_layernorm")];

/// Gemma's four norms per layer (gguf-py `TensorNameMap`: `ffn_norm` is transformers'
/// `pre_feedforward_layernorm` there, and the attention output's norm is
/// `post_attention_norm`).
const SANDWICH_NORMS: &[(&str, &str)] = &[
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// The block names of a family: its norms, and its fused projections first where it has them
/// (they shadow `ffn_up`'s plain meaning).
fn block_names(family: &Family) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    let norms = if family.sandwich_norms {
        SANDWICH_NORMS
    } else {
        LLAMA_NORMS
    };
    let fused: &[(&str, &str)] = if family.fused_projections {
        FUSED_NAMES
    } else {
        &[]
    };
    fused.iter().chain(BLOCK_NAMES).chain(norms)
}

/// The transformers name of a GGUF tensor, or `None` when the decoder has no such weight.
/// The names depend on the `family`'s norms and fused projections.
pub fn hf_name(gguf: &str, family: &Family) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let (_, hf) = block_names(family).find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of a transformers module path (`model.layers.3.self_attn.q_proj` →
/// `blk.3.attn_q`; `lm_head` → `output`), or `None` when GGUF has no such tensor.
pub fn gguf_module(hf: &str, family: &Family) -> Option<String> {
    match hf {
        "lm_head" => return Some("output".into()),
        "model.embed_tokens" => return Some("token_embd".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (gguf, _) = block_names(family).find(|(_, h)| *h == part)?;
    Some(format!("blk.{layer}.{gguf}"))
}

/// Applies llama.cpp's rotary row permutation (the inverse of [`unpermute`]): transformers
/// rows `h·hd + k·hd/2 + j` go to `h·hd + 2j + k`.
pub fn permute(t: &Tensor, heads: usize) -> Result<Tensor> {
    swap_row_groups(t, heads, true, "num_attention_heads")
}

/// Undoes llama.cpp's rotary row permutation of a q/k weight or bias: GGUF rows pair
/// adjacent dimensions, transformers pairs the two halves of each head (§8).
pub fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    swap_row_groups(t, heads, false, "attention.head_count")
}

/// Splits each head's rows into [2, hd/2] (`halves_first`) or [hd/2, 2] and swaps the two
/// axes: the one reshuffle both directions of the permutation are made of.
fn swap_row_groups(t: &Tensor, heads: usize, halves_first: bool, field: &str) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(heads * 2) {
        return Err(EngineError::config(
            field,
            format!("{rows} rows do not split into {heads} heads of even width"),
        ));
    }
    let half = rows / heads / 2;
    let mut split = if halves_first {
        vec![heads, 2, half]
    } else {
        vec![heads, half, 2]
    };
    split.extend_from_slice(&dims[1..]);
    Ok(t.reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// Recovers Llama 3 rope scaling from llama.cpp's `rope_freqs.weight` (one divisor per
/// frequency), trying the settings Llama 3.x models ship with.
pub fn llama3_scaling(
    divisors: &[f32],
    head_dim: usize,
    rope_theta: f64,
    context: usize,
) -> Option<serde_json::Value> {
    let factor = divisors.iter().fold(1f32, |m, &x| m.max(x)) as f64;
    let mut originals = vec![8192usize, 4096, 2048];
    if factor > 0.0 {
        originals.push((context as f64 / factor).round() as usize);
    }
    for original in originals {
        for (low, high) in [(1.0, 4.0), (1.0, 2.0)] {
            let fits = divisors.iter().enumerate().all(|(i, &d)| {
                let freq = 1.0 / rope_theta.powf(2.0 * i as f64 / head_dim as f64);
                let want = llama3_divisor(freq, factor, low, high, original as f64);
                (want - f64::from(d)).abs() <= 1e-3 * want.abs().max(1.0)
            });
            if fits && divisors.len() == head_dim / 2 {
                return Some(serde_json::json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": original,
                }));
            }
        }
    }
    None
}

/// The divisor llama.cpp's converter stores for one frequency (`LlamaModel.generate_extra_tensors`).
pub fn llama3_divisor(freq: f64, factor: f64, low: f64, high: f64, original: f64) -> f64 {
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < original / high {
        1.0
    } else if wavelen > original / low {
        factor
    } else {
        let smooth = (original / wavelen - low) / (high - low);
        1.0 / ((1.0 - smooth) / factor + smooth)
    }
}

/// Reads one tensor and dequantises it to f32 on the CPU.
pub fn dequantized<R: std::io::Read + std::io::Seek>(
    content: &candle_core::quantized::gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> candle_core::Result<Tensor> {
    content
        .tensor(reader, name, &Device::Cpu)?
        .dequantize(&Device::Cpu)
}
