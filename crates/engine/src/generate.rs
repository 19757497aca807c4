//! Text generation with a KV cache: greedy or sampled (temperature, top-p), stopping at
//! the tokenizer's end-of-sequence tokens.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::model::t5::T5Model;
use crate::model::{ForwardCtx, KvCache, LlamaModel};
use crate::ops::SplitMix64;

/// Decoding settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// Most tokens to produce.
    pub max_new_tokens: usize,
    /// 0 = greedy; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Picks the next token from last-position logits.
fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                if v > b.1 {
                    (i, v)
                } else {
                    b
                }
            })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, (((l - max) as f64) / opts.temperature).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= sum);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let cut = probs
        .iter()
        .position(|p| {
            kept += p.1;
            kept >= opts.top_p
        })
        .map(|i| i + 1)
        .unwrap_or(probs.len());
    probs.truncate(cut);
    let mut x = rng.next_f64() * kept.min(1.0);
    for (i, p) in &probs {
        x -= p;
        if x <= 0.0 {
            return *i as u32;
        }
    }
    probs.last().map(|p| p.0 as u32).unwrap_or_else(argmax)
}

/// Continues `prompt` and returns the new token ids (EOS excluded). `on_token` sees each
/// new id as it is produced, for streaming.
pub fn generate(
    model: &LlamaModel,
    prompt: &[u32],
    eos: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    generate_until(model, prompt, eos, opts, |id| {
        on_token(id);
        true
    })
}

/// [`generate`] that stops early when `on_token` returns false (a Stop button).
pub fn generate_until(
    model: &LlamaModel,
    prompt: &[u32],
    eos: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(EngineError::config("prompt", "is empty"));
    }
    let limit = model.config().max_position_embeddings;
    if prompt.len() >= limit {
        return Err(EngineError::config(
            "prompt",
            format!(
                "{} tokens exceed the model's context of {limit}",
                prompt.len()
            ),
        ));
    }
    let device: &Device = model.device();
    let mut cache = KvCache::default();
    let mut rng = SplitMix64::new(opts.seed);
    let mut input = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut out = Vec::new();
    for _ in 0..opts.max_new_tokens.min(limit - prompt.len()) {
        let logits: Vec<f32> = model
            .last_logits(&input, &mut cache)?
            .squeeze(0)?
            .to_vec1()?;
        let next = pick(&logits, opts, &mut rng);
        if eos.contains(&next) {
            break;
        }
        out.push(next);
        if !on_token(next) {
            break;
        }
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    }
    Ok(out)
}

/// Continues `source` with a T5 model and returns the new ids (EOS excluded): the encoder runs
/// once, the decoder starts from its start token with its keys and values cached. `on_token`
/// sees each new id and stops early by returning false.
pub fn generate_seq2seq(
    model: &T5Model,
    source: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    if source.is_empty() {
        return Err(EngineError::config("prompt", "is empty"));
    }
    let device = model.device();
    let ids = Tensor::new(source, device)?.unsqueeze(0)?;
    let mask = Tensor::ones((1, source.len()), DType::F32, device)?;
    let (memory, memory_mask) = model.encode(&ids, &mask, &ForwardCtx::eval())?;
    let mut cache = model.cache_for(&memory.detach(), &memory_mask)?;
    let mut rng = SplitMix64::new(opts.seed);
    let eos = model.config().eos_token_id;
    let mut next = model.config().decoder_start_token_id;
    let mut out = Vec::new();
    for _ in 0..opts.max_new_tokens {
        let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
        let logits: Vec<f32> = model
            .step(&input, &mut cache)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        next = pick(&logits, opts, &mut rng);
        if next == eos {
            break;
        }
        out.push(next);
        if !on_token(next) {
            break;
        }
    }
    Ok(out)
}
