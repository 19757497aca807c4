//! T5 (`T5ForConditionalGeneration`: T5 v1.0, v1.1, Flan-T5) as transformers computes it
//! (`models/t5/modeling_t5.py`), written for training with the composed ops on any device:
//! an encoder and a decoder stack over a shared embedding; RMS-style layer norms without mean
//! or bias; attention without the `d^-½` factor, a relative-position bias computed by each
//! stack's first block and added in every block (bidirectional in the encoder, causal in the
//! decoder); cross-attention without a bias; ReLU or gated-GELU feed-forward; the head tied
//! (output scaled by `d_model^-½`) or its own. Projections are [`Linear`]s, so LoRA and IA³
//! attach to them as on a decoder-only model, under PEFT's module names
//! (`encoder.block.0.layer.0.SelfAttention.q`, `decoder.block.1.layer.1.EncDecAttention.v`,
//! `….layer.2.DenseReluDense.wi_0`).

pub mod config;
mod parts;
mod prompting;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use config::{is_t5, relative_bucket, FeedForward, T5Config, ARCHITECTURE};
pub use prompting::prompt_rows;

use crate::error::{EngineError, Result};
use crate::model::base_weight::BaseWeight;
use crate::model::blocks::{gated, head_loss};
use crate::model::family::Activation;
use crate::model::linear::Linear;
use crate::model::load::{read_safetensors, weight_files};
use crate::model::quantized::Quantization;
use crate::ops::{self, ForwardCtx};

/// A score that softmax turns into an exact 0 (a masked key).
const MASKED: f64 = -1e9;

/// Self- or cross-attention: four projections without bias.
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

/// `t` [b, len, heads·d] as [b, heads, len, d].
fn split_heads(t: Tensor, b: usize, len: usize, heads: usize) -> Result<Tensor> {
    Ok(t.reshape((b, len, heads, ()))?
        .transpose(1, 2)?
        .contiguous()?)
}

impl Attention {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.q, &mut self.k, &mut self.v, &mut self.o]
    }

    /// Attends from `x` [b, tq, d] to `kv` [b, tk, d], after the keys and values `past`
    /// [b, h, p, d] where given (a prefix), with `bias` [1 or b, h, tq, p + tk] added to the
    /// scores.
    fn forward(
        &self,
        x: &Tensor,
        kv: &Tensor,
        past: Option<&(Tensor, Tensor)>,
        bias: &Tensor,
        heads: usize,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, tq, _) = x.dims3()?;
        let tk = kv.dim(1)?;
        let q = split_heads(self.q.forward(x, ctx)?, b, tq, heads)?;
        let mut k = split_heads(self.k.forward(kv, ctx)?, b, tk, heads)?;
        let mut v = split_heads(self.v.forward(kv, ctx)?, b, tk, heads)?;
        if let Some((pk, pv)) = past {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        self.attend(&q, &k, &v, bias, ctx)
    }

    /// The output projection of `q` [b, h, tq, d] attending to `k`, `v` [b, h, tk, d].
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, _, tq, _) = q.dims4()?;
        // No d^-½: T5 folds the scale into its initialisation.
        let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        let scores = scores.broadcast_add(&bias.to_dtype(scores.dtype())?)?;
        let probs = ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(v)?.transpose(1, 2)?.reshape((b, tq, ()))?;
        self.o.forward(&out, ctx)
    }
}

/// The feed-forward block's projections.
#[derive(Debug, Clone)]
enum Dense {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    Gated {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl Dense {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        match self {
            Dense::Relu { wi, wo } => wo.forward(&wi.forward(x, ctx)?.relu()?, ctx),
            Dense::Gated { wi_0, wi_1, wo } => {
                // transformers' `gelu_new` is the tanh approximation.
                let (gate, up) = (wi_0.forward(x, ctx)?, wi_1.forward(x, ctx)?);
                wo.forward(&gated(&gate, &up, Activation::GeluTanh)?, ctx)
            }
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        match self {
            Dense::Relu { wi, wo } => vec![wi, wo],
            Dense::Gated { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        }
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Dense::Relu { wi, wo } => vec![wi, wo],
            Dense::Gated { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        }
    }
}

/// One block: self-attention, cross-attention in the decoder, feed-forward, each after its
/// own layer norm and added to the residual stream.
#[derive(Debug, Clone)]
struct Block {
    self_norm: Tensor,
    self_attn: Attention,
    cross: Option<(Tensor, Attention)>,
    ff_norm: Tensor,
    ff: Dense,
}

/// An encoder or decoder stack.
#[derive(Debug, Clone)]
struct Stack {
    blocks: Vec<Block>,
    /// The first block's relative-attention bias table [buckets, heads].
    relative_bias: Tensor,
    final_norm: Tensor,
    decoder: bool,
}

/// A T5 model ready to train or generate.
#[derive(Debug, Clone)]
pub struct T5Model {
    cfg: T5Config,
    shared: Tensor,
    encoder: Stack,
    decoder: Stack,
    /// The head of its own (v1.1, Flan-T5); `None` when tied to `shared`.
    lm_head: Option<Linear>,
    /// Prompt tuning's table and the number of its rows put before each source.
    prompt: Option<(Tensor, usize)>,
    /// Prefix tuning's keys and values [tokens, layers·2·d_model].
    prefix: Option<Tensor>,
    dtype: DType,
    device: Device,
}

/// The weights of a checkpoint by name, each taken once.
struct Weights<'a> {
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &'a Device,
    dir: &'a Path,
}

impl Weights<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| EngineError::bad_file(self.dir, format!("lacks the tensor `{name}`")))?;
        if t.dims() != shape {
            return Err(EngineError::bad_file(
                self.dir,
                format!(
                    "`{name}` has shape {:?}, the config implies {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t.to_dtype(self.dtype)?.to_device(self.device)?)
    }

    fn linear(&mut self, name: String, out: usize, inp: usize) -> Result<Linear> {
        let weight = self.take(&format!("{name}.weight"), &[out, inp])?;
        Ok(Linear {
            name,
            weight: weight.into(),
            bias: None,
            lora: None,
            ia3: None,
        })
    }

    fn attention(&mut self, prefix: &str, cfg: &T5Config) -> Result<Attention> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        Ok(Attention {
            q: self.linear(format!("{prefix}.q"), inner, d)?,
            k: self.linear(format!("{prefix}.k"), inner, d)?,
            v: self.linear(format!("{prefix}.v"), inner, d)?,
            o: self.linear(format!("{prefix}.o"), d, inner)?,
        })
    }

    fn dense(&mut self, prefix: &str, cfg: &T5Config) -> Result<Dense> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        Ok(match cfg.feed_forward {
            FeedForward::Relu => Dense::Relu {
                wi: self.linear(format!("{prefix}.wi"), ff, d)?,
                wo: self.linear(format!("{prefix}.wo"), d, ff)?,
            },
            FeedForward::GatedGelu => Dense::Gated {
                wi_0: self.linear(format!("{prefix}.wi_0"), ff, d)?,
                wi_1: self.linear(format!("{prefix}.wi_1"), ff, d)?,
                wo: self.linear(format!("{prefix}.wo"), d, ff)?,
            },
        })
    }

    fn stack(&mut self, name: &str, blocks: usize, cfg: &T5Config) -> Result<Stack> {
        let decoder = name == "decoder";
        let d = cfg.d_model;
        let mut out = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let p = format!("{name}.block.{i}.layer");
            let self_norm = self.take(&format!("{p}.0.layer_norm.weight"), &[d])?;
            let self_attn = self.attention(&format!("{p}.0.SelfAttention"), cfg)?;
            let (cross, ff_at) = match decoder {
                true => (
                    Some((
                        self.take(&format!("{p}.1.layer_norm.weight"), &[d])?,
                        self.attention(&format!("{p}.1.EncDecAttention"), cfg)?,
                    )),
                    2,
                ),
                false => (None, 1),
            };
            out.push(Block {
                self_norm,
                self_attn,
                cross,
                ff_norm: self.take(&format!("{p}.{ff_at}.layer_norm.weight"), &[d])?,
                ff: self.dense(&format!("{p}.{ff_at}.DenseReluDense"), cfg)?,
            });
        }
        Ok(Stack {
            blocks: out,
            relative_bias: self.take(
                &format!("{name}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            )?,
            final_norm: self.take(&format!("{name}.final_layer_norm.weight"), &[d])?,
            decoder,
        })
    }
}

impl Stack {
    /// The relative-position bias [1, heads, tq, tk] for queries at positions
    /// `first..first + tq` over keys `0..tk`.
    fn position_bias(&self, cfg: &T5Config, first: usize, tq: usize, tk: usize) -> Result<Tensor> {
        let ids: Vec<u32> = (0..tq)
            .flat_map(|i| {
                (0..tk).map(move |j| {
                    relative_bucket(
                        j as i64 - (first + i) as i64,
                        !self.decoder,
                        cfg.relative_attention_num_buckets,
                        cfg.relative_attention_max_distance,
                    ) as u32
                })
            })
            .collect();
        let ids = Tensor::from_vec(ids, tq * tk, self.relative_bias.device())?;
        let values = self.relative_bias.index_select(&ids, 0)?; // [tq·tk, heads]
        Ok(values
            .reshape((tq, tk, cfg.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?)
    }

    /// Runs the stack over embedded inputs `x` [b, t, d]; `self_mask` is added to the
    /// self-attention scores, each block's self-attention sees its `prefix` keys and values
    /// first where given (the queries' positions counted after them), and in the decoder
    /// `memory` (the encoder's output) is attended to with `cross_mask`.
    fn forward(
        &self,
        cfg: &T5Config,
        mut x: Tensor,
        self_mask: &Tensor,
        prefix: Option<&[(Tensor, Tensor)]>,
        memory: Option<(&Tensor, &Tensor)>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let t = x.dim(1)?;
        let past = match prefix.and_then(|p| p.first()) {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        let bias = self
            .position_bias(cfg, past, t, past + t)?
            .broadcast_add(&self_mask.to_dtype(self.relative_bias.dtype())?)?;
        let eps = cfg.layer_norm_epsilon;
        let heads = cfg.num_heads;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = ops::rms_norm(&x, &block.self_norm, eps)?;
            let own = prefix.and_then(|p| p.get(i));
            x = (x + block.self_attn.forward(&h, &h, own, &bias, heads, ctx)?)?;
            if let (Some((norm, attn)), Some((memory, cross_mask))) = (&block.cross, memory) {
                let h = ops::rms_norm(&x, norm, eps)?;
                x = (x + attn.forward(&h, memory, None, cross_mask, heads, ctx)?)?;
            }
            let h = ops::rms_norm(&x, &block.ff_norm, eps)?;
            x = (x + block.ff.forward(&h, ctx)?)?;
        }
        ops::rms_norm(&x, &self.final_norm, eps)
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            out.extend(b.self_attn.linears_mut());
            if let Some((_, a)) = &mut b.cross {
                out.extend(a.linears_mut());
            }
            out.extend(b.ff.linears_mut());
        }
        out
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for b in &self.blocks {
            let a = &b.self_attn;
            out.extend([&a.q, &a.k, &a.v, &a.o]);
            if let Some((_, a)) = &b.cross {
                out.extend([&a.q, &a.k, &a.v, &a.o]);
            }
            out.extend(b.ff.linears());
        }
        out
    }
}

/// An additive mask [b, 1, 1, t] from a padding mask [b, t] (1 = a token, 0 = padding).
fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let keep = mask.to_dtype(DType::F32)?;
    Ok(((1.0 - keep)? * MASKED)?.unsqueeze(1)?.unsqueeze(1)?)
}

/// The causal mask [1, 1, t, past + t] of `t` queries after `past` positions they all see
/// (a prefix): 0 where key j ≤ past + i, masked above.
fn causal_bias(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..t)
        .flat_map(|i| (0..past + t).map(move |j| if j > past + i { MASKED as f32 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(v, (1, 1, t, past + t), device)?)
}

/// Refuses a quantized base for T5 by name (its projections are held in `dtype` for now).
pub fn no_quantization(quantize: Option<Quantization>) -> Result<()> {
    match quantize {
        Some(_) => Err(EngineError::config(
            "quantize",
            "is not available for T5 yet",
        )),
        None => Ok(()),
    }
}

impl T5Model {
    /// [`T5Model::load`] where a run or a command may have asked for a quantized base.
    pub fn load_quantized(
        dir: &Path,
        dtype: DType,
        device: &Device,
        quantize: Option<Quantization>,
    ) -> Result<Self> {
        no_quantization(quantize)?;
        Self::load(dir, dtype, device)
    }

    /// Loads a T5 folder (config.json and safetensors weights) in `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = T5Config::from_path(dir)?;
        let mut tensors = HashMap::new();
        for file in weight_files(dir)? {
            tensors.extend(read_safetensors(&file)?);
        }
        let mut w = Weights {
            tensors,
            dtype,
            device,
            dir,
        };
        let shared = w.take("shared.weight", &[cfg.vocab_size, cfg.d_model])?;
        let encoder = w.stack("encoder", cfg.num_layers, &cfg)?;
        let decoder = w.stack("decoder", cfg.num_decoder_layers, &cfg)?;
        let lm_head = match cfg.tie_word_embeddings {
            true => None,
            false => Some(w.linear("lm_head".into(), cfg.vocab_size, cfg.d_model)?),
        };
        Ok(Self {
            cfg,
            shared,
            encoder,
            decoder,
            lm_head,
            prompt: None,
            prefix: None,
            dtype,
            device: device.clone(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// The type weights and activations are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The encoder's output [b, s', d] for `input_ids` [b, s] with its padding mask [b, s],
    /// and the mask [b, s'] the decoder attends to it with (s' = s, or with prompt tuning
    /// its virtual tokens first).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, Tensor)> {
        let (x, mask) = self.with_prompt(self.embed(input_ids)?, mask)?;
        let memory = self
            .encoder
            .forward(&self.cfg, x, &padding_bias(&mask)?, None, None, ctx)?;
        Ok((memory, mask))
    }

    /// The logits [b, t, vocab] for `decoder_ids` [b, t] given the encoder's output and the
    /// mask [`T5Model::encode`] returned with it.
    pub fn decode(
        &self,
        decoder_ids: &Tensor,
        memory: &Tensor,
        mask: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let h = self.decode_hidden(decoder_ids, memory, mask, ctx)?;
        self.head(&h, ctx)
    }

    /// The decoder's output [b, t, d] for `decoder_ids` as the head reads it
    /// ([`T5Model::head_input`]).
    fn decode_hidden(
        &self,
        decoder_ids: &Tensor,
        memory: &Tensor,
        mask: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, t) = decoder_ids.dims2()?;
        let x = self.embed(decoder_ids)?;
        let cross = padding_bias(mask)?;
        let prefix = self.prefix_kv(b)?;
        let h = self.decoder.forward(
            &self.cfg,
            x,
            &causal_bias(t, self.prefix_len()?, &self.device)?,
            prefix.as_deref(),
            Some((memory, &cross)),
            ctx,
        )?;
        self.head_input(h)
    }

    /// The decoder's normed output as the head reads it: scaled by `d_model^-½` where the
    /// head is the shared embedding (T5 v1.0).
    fn head_input(&self, h: Tensor) -> Result<Tensor> {
        match self.lm_head {
            Some(_) => Ok(h),
            None => Ok((h * (self.cfg.d_model as f64).powf(-0.5))?),
        }
    }

    /// Logits from [`T5Model::head_input`]'s output: the head of its own, or the shared
    /// embedding.
    fn head(&self, h: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(h, ctx),
            None => Ok(h.broadcast_matmul(&self.shared.t()?)?),
        }
    }

    /// The mean masked cross-entropy of the decoder's logits for sources `input_ids` with
    /// padding mask `mask` and decoder inputs `decoder_ids` [b, t], against `targets` and
    /// `weights` [b, t], and the number of weighted targets: on the CPU the head's product
    /// and the loss in chunks (`blocks::head_loss`), never the whole [b·t, vocab] logits.
    pub fn batch_loss(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        decoder_ids: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, f64)> {
        let (memory, memory_mask) = self.encode(input_ids, mask, ctx)?;
        let h = self.decode_hidden(decoder_ids, &memory, &memory_mask, ctx)?;
        let (b, t, d) = h.dims3()?;
        let h = h.reshape((b * t, d))?;
        let shared = BaseWeight::from(self.shared.clone());
        // A head with an adapter of its own computes its logits whole.
        let plain = match &self.lm_head {
            Some(head) if head.lora.is_none() && head.ia3.is_none() => Some(&head.weight),
            Some(_) => None,
            None => Some(&shared),
        };
        head_loss(
            &h,
            plain,
            |h| self.head(h, ctx),
            &targets.flatten_all()?,
            &weights.flatten_all()?,
            None,
        )
    }

    /// The logits of `decoder_ids` for source `input_ids` with padding mask `mask`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        decoder_ids: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (memory, memory_mask) = self.encode(input_ids, mask, ctx)?;
        self.decode(decoder_ids, &memory, &memory_mask, ctx)
    }

    /// The decoder's input for `labels` [b, t] (`-100` where the loss ignores a position):
    /// the start token, then the labels shifted right, ignored positions as padding
    /// (transformers' `_shift_right`).
    pub fn shift_right(&self, labels: &[Vec<i64>]) -> Vec<Vec<u32>> {
        labels
            .iter()
            .map(|row| {
                std::iter::once(self.cfg.decoder_start_token_id)
                    .chain(row.iter().take(row.len().saturating_sub(1)).map(|&l| {
                        if l < 0 {
                            self.cfg.pad_token_id
                        } else {
                            l as u32
                        }
                    }))
                    .collect()
            })
            .collect()
    }

    /// The mean cross-entropy of `logits` [b, t, vocab] against `labels` [b, t], positions
    /// with a negative label (`-100`) left out, as transformers' loss.
    pub fn loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        let targets: Vec<u32> = labels.iter().flatten().map(|&l| l.max(0) as u32).collect();
        let weights: Vec<f32> = labels
            .iter()
            .flatten()
            .map(|&l| if l < 0 { 0.0 } else { 1.0 })
            .collect();
        if targets.len() != b * t {
            return Err(EngineError::config(
                "labels",
                format!("{} labels for {b} × {t} positions", targets.len()),
            ));
        }
        let device = logits.device();
        let targets = Tensor::from_vec(targets, b * t, device)?;
        let weights = Tensor::from_vec(weights, b * t, device)?;
        let (loss, _) =
            ops::masked_cross_entropy(&logits.reshape((b * t, v))?, &targets, &weights)?;
        Ok(loss)
    }

    /// Every projection, encoder then decoder then the head, under PEFT's module names.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = self.encoder.linears_mut();
        out.extend(self.decoder.linears_mut());
        out.extend(self.lm_head.as_mut());
        out
    }

    /// Every projection, as [`T5Model::linears_mut`] lists them.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = self.encoder.linears();
        out.extend(self.decoder.linears());
        out.extend(self.lm_head.as_ref());
        out
    }

    /// The shared embedding's rows [b, t, d] for `ids` [b, t].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        Ok(self
            .shared
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.d_model))?)
    }
}

/// The decoder's keys and values while generating: each block's self-attention so far
/// (detached: generation builds no graph), and its cross-attention's, computed once from the
/// encoder's output.
#[derive(Debug, Default)]
pub struct T5Cache {
    own: Vec<Option<(Tensor, Tensor)>>,
    cross: Vec<(Tensor, Tensor)>,
    cross_mask: Option<Tensor>,
    /// Decoder positions done (a prefix's included).
    pub position: usize,
}

impl T5Model {
    /// A cache for generating from `memory` (the encoder's output [b, s, d]) with the mask
    /// [`T5Model::encode`] returned with it; with prefix tuning the decoder starts after the
    /// prefix.
    pub fn cache_for(&self, memory: &Tensor, mask: &Tensor) -> Result<T5Cache> {
        let ctx = ForwardCtx::eval();
        let (b, s, _) = memory.dims3()?;
        let heads = self.cfg.num_heads;
        let mut cross = Vec::with_capacity(self.decoder.blocks.len());
        for block in &self.decoder.blocks {
            let Some((_, attn)) = &block.cross else {
                continue;
            };
            let k = split_heads(attn.k.forward(memory, &ctx)?, b, s, heads)?.detach();
            let v = split_heads(attn.v.forward(memory, &ctx)?, b, s, heads)?.detach();
            cross.push((k, v));
        }
        let own = match self.prefix_kv(b)? {
            Some(prefix) => prefix.into_iter().map(Some).collect(),
            None => vec![None; self.decoder.blocks.len()],
        };
        Ok(T5Cache {
            own,
            cross,
            cross_mask: Some(padding_bias(mask)?),
            position: self.prefix_len()?,
        })
    }

    /// The logits [b, vocab] of the next token after decoder tokens `ids` [b, 1], the
    /// decoder's earlier keys and values and the cross-attention's taken from `cache`.
    pub fn step(&self, ids: &Tensor, cache: &mut T5Cache) -> Result<Tensor> {
        let ctx = ForwardCtx::eval();
        let cfg = &self.cfg;
        let (b, t) = ids.dims2()?;
        let heads = cfg.num_heads;
        let first = cache.position;
        let mut x = self.embed(ids)?;
        let bias = self.decoder.position_bias(cfg, first, t, first + t)?;
        let cross_mask = cache
            .cross_mask
            .clone()
            .ok_or_else(|| EngineError::config("cache", "made without the encoder's output"))?;
        let eps = cfg.layer_norm_epsilon;
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let h = ops::rms_norm(&x, &block.self_norm, eps)?;
            let a = &block.self_attn;
            let q = split_heads(a.q.forward(&h, &ctx)?, b, t, heads)?;
            let mut k = split_heads(a.k.forward(&h, &ctx)?, b, t, heads)?;
            let mut v = split_heads(a.v.forward(&h, &ctx)?, b, t, heads)?;
            if let Some((pk, pv)) = &cache.own[i] {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.own[i] = Some((k.detach(), v.detach()));
            x = (x + a.attend(&q, &k, &v, &bias, &ctx)?)?;
            if let (Some((norm, attn)), Some((ck, cv))) = (&block.cross, cache.cross.get(i)) {
                let h = ops::rms_norm(&x, norm, eps)?;
                let q = split_heads(attn.q.forward(&h, &ctx)?, b, t, heads)?;
                x = (x + attn.attend(&q, ck, cv, &cross_mask, &ctx)?)?;
            }
            let h = ops::rms_norm(&x, &block.ff_norm, eps)?;
            x = (x + block.ff.forward(&h, &ctx)?)?;
        }
        cache.position += t;
        let h = self.head_input(ops::rms_norm(&x, &self.decoder.final_norm, eps)?)?;
        let logits = self.head(&h, &ctx)?;
        Ok(logits.narrow(1, t - 1, 1)?.squeeze(1)?)
    }
}
