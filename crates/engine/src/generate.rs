//! Text generation with a KV cache: greedy or sampled (temperature, top-p), stopping at
//! the tokenizer's end-of-sequence tokens.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::model::fused::decode::{unsupported, Decoder, RowAdapter};
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

/// A sequence's decoding settings with its own random stream.
pub struct Sampler {
    opts: GenerateOptions,
    rng: SplitMix64,
}

impl Sampler {
    /// Seeded by `opts.seed`.
    pub fn new(opts: &GenerateOptions) -> Self {
        Self {
            opts: opts.clone(),
            rng: SplitMix64::new(opts.seed),
        }
    }

    /// The next token for last-position `logits`.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        pick(logits, &self.opts, &mut self.rng)
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
    let steps = opts.max_new_tokens.min(limit - prompt.len());
    if unsupported(model).is_none() {
        let decoder = Decoder::new(model)?;
        let mut seq = decoder.sequence(prompt.len() + steps, RowAdapter::of(model)?)?;
        let mut sampler = Sampler::new(opts);
        let mut input = prompt.to_vec();
        let mut out = Vec::new();
        for _ in 0..steps {
            let logits = decoder.step(&mut [(&mut seq, &input)])?;
            let next = sampler.pick(&logits[0]);
            if eos.contains(&next) || !keep(next, &mut out, &mut on_token) {
                break;
            }
            input = vec![next];
        }
        return Ok(out);
    }
    // Prompt and prefix tuning, bottleneck adapters, DoRA, IA³, a GPU: the model itself.
    let device: &Device = model.device();
    let mut cache = KvCache::default();
    let mut sampler = Sampler::new(opts);
    let mut input = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut out = Vec::new();
    for _ in 0..steps {
        let logits: Vec<f32> = model
            .last_logits(&input, &mut cache)?
            .squeeze(0)?
            .to_vec1()?;
        let next = sampler.pick(&logits);
        if eos.contains(&next) || !keep(next, &mut out, &mut on_token) {
            break;
        }
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    }
    Ok(out)
}

/// Records a new token and tells whether to go on (`on_token` may stop it).
fn keep(next: u32, out: &mut Vec<u32>, on_token: &mut impl FnMut(u32) -> bool) -> bool {
    out.push(next);
    on_token(next)
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
    let mut sampler = Sampler::new(opts);
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
        next = sampler.pick(&logits);
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
