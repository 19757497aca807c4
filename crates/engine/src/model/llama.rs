//! The decoder written for training, one for every supported family: it reads the parts
//! table of `family.rs` (q/k norms, Gemma's four norms per layer and `1 + w` norms, the gate
//! activation, scaled embeddings, sliding-window layers with their own rotary base).
//!
//! Reference: transformers `models/llama/modeling_llama.py` (Llama 2/3, Mistral, SmolLM,
//! TinyLlama), `models/qwen2/modeling_qwen2.py` (q/k/v bias), `models/qwen3/modeling_qwen3.py`
//! and `models/gemma3/modeling_gemma3.py`. Weight names mirror transformers' module tree so
//! that PEFT's target matching and key names apply unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::base_weight::BaseWeight;
use super::blocks::{self, Attend};
use super::config::LlamaConfig;
use super::fused;
use super::linear::Linear;
use super::quantized::QuantizedWeight;
use super::rope::Rope;
use crate::error::{EngineError, Result};
use crate::model::adapters::bottleneck::{LayerAdapters, Site};
use crate::ops::ForwardCtx;

/// Keys and values of every layer for incremental decoding.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any cached tensor is part of an autograd graph (it never should be).
    pub fn tracks_ops(&self) -> bool {
        self.layers
            .iter()
            .flatten()
            .any(|(k, v)| k.track_op() || v.track_op())
    }
}

/// Input projections of a sublayer: apart (q, k, v; gate, up), or one fused matrix whose
/// output rows are theirs in that order (Phi-3's `qkv_proj`, `gate_up_proj`).
#[derive(Debug, Clone)]
pub(super) enum Inputs<const N: usize> {
    Apart([Linear; N]),
    Fused(Linear),
}

impl<const N: usize> Inputs<N> {
    pub(super) fn linears(&self) -> Vec<&Linear> {
        match self {
            Inputs::Apart(all) => all.iter().collect(),
            Inputs::Fused(one) => vec![one],
        }
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Inputs::Apart(all) => all.iter_mut().collect(),
            Inputs::Fused(one) => vec![one],
        }
    }

    /// Each part's output for `x`, a fused matrix's split along the last axis by `widths`.
    fn forward(&self, x: &Tensor, widths: [usize; N], ctx: &ForwardCtx) -> Result<[Tensor; N]> {
        let parts: Vec<Tensor> = match self {
            Inputs::Apart(all) => all
                .iter()
                .map(|l| l.forward(x, ctx))
                .collect::<Result<_>>()?,
            Inputs::Fused(one) => {
                let out = one.forward(x, ctx)?;
                let last = out.rank() - 1;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        at += w;
                        Ok(out.narrow(last, at - w, w)?.contiguous()?)
                    })
                    .collect::<Result<_>>()?
            }
        };
        // One part per width, by construction.
        parts
            .try_into()
            .map_err(|_| EngineError::config("model", "a split projection lost a part"))
    }
}

#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) input_layernorm: Tensor,
    /// q, k and v.
    pub(super) attn_in: Inputs<3>,
    pub(super) o_proj: Linear,
    /// Llama: the MLP's input norm; Gemma: the attention output's norm.
    pub(super) post_attention_layernorm: Tensor,
    /// gate and up.
    pub(super) mlp_in: Inputs<2>,
    pub(super) down_proj: Linear,
    /// RMSNorm of each query and key head (Qwen3, Gemma 3).
    pub(super) qk_norm: Option<(Tensor, Tensor)>,
    /// Gemma's MLP input and output norms.
    pub(super) feedforward_norms: Option<(Tensor, Tensor)>,
}

/// A block's norm weights' names below `model.layers.{i}.`, in `Block::norms` order.
const NORM_NAMES: [&str; 6] = [
    "input_layernorm",
    "post_attention_layernorm",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
];

/// The norms a block has, in `NORM_NAMES` order, each with its name.
fn named<T>(norms: [Option<T>; 6]) -> Vec<(&'static str, T)> {
    NORM_NAMES
        .into_iter()
        .zip(norms)
        .filter_map(|(name, t)| t.map(|t| (name, t)))
        .collect()
}

impl Block {
    /// The block's linear layers in transformers' order (q, k, v or qkv; o; gate, up or
    /// gate_up; down).
    pub(super) fn linears(&self) -> Vec<&Linear> {
        let mut out = self.attn_in.linears();
        out.push(&self.o_proj);
        out.extend(self.mlp_in.linears());
        out.push(&self.down_proj);
        out
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.parts_mut().1
    }

    /// The norm weights the block has, each with its name (`NORM_NAMES`).
    fn norms(&self) -> Vec<(&'static str, &Tensor)> {
        let (qk, ff) = (self.qk_norm.as_ref(), self.feedforward_norms.as_ref());
        named([
            Some(&self.input_layernorm),
            Some(&self.post_attention_layernorm),
            qk.map(|n| &n.0),
            qk.map(|n| &n.1),
            ff.map(|n| &n.0),
            ff.map(|n| &n.1),
        ])
    }

    /// The norm weights (named) and the linears, borrowed together.
    fn parts_mut(&mut self) -> (Vec<(&'static str, &mut Tensor)>, Vec<&mut Linear>) {
        let Block {
            input_layernorm,
            attn_in,
            o_proj,
            post_attention_layernorm,
            mlp_in,
            down_proj,
            qk_norm,
            feedforward_norms,
        } = self;
        let (q_norm, k_norm) = match qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let (pre_ff, post_ff) = match feedforward_norms {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let norms = named([
            Some(input_layernorm),
            Some(post_attention_layernorm),
            q_norm,
            k_norm,
            pre_ff,
            post_ff,
        ]);
        let mut linears = attn_in.linears_mut();
        linears.push(o_proj);
        linears.extend(mlp_in.linears_mut());
        linears.push(down_proj);
        (norms, linears)
    }

    /// Whether every norm weight is frozen.
    fn norms_frozen(&self) -> bool {
        self.norms().iter().all(|(_, t)| !t.is_variable())
    }
}

/// What every block needs about the positions of the current tokens.
struct Positions {
    /// `(cos, sin)` of full-attention layers.
    full: (Tensor, Tensor),
    /// `(cos, sin)` of sliding-window layers, where their rotary base differs.
    local: Option<(Tensor, Tensor)>,
    /// Causal masks of full and sliding layers, for the composed attention only
    /// (`blocks::needs_mask`).
    masks: Option<(Tensor, Option<Tensor>)>,
}

impl Positions {
    fn rotary(&self, sliding: bool) -> (&Tensor, &Tensor) {
        let (cos, sin) = match (&self.local, sliding) {
            (Some(local), true) => local,
            _ => &self.full,
        };
        (cos, sin)
    }

    fn mask(&self, sliding: bool) -> Option<&Tensor> {
        let (full, windowed) = self.masks.as_ref()?;
        match (windowed, sliding) {
            (Some(w), true) => Some(w),
            _ => Some(full),
        }
    }
}

/// One base weight as `LlamaModel::base_parts` lists it.
pub enum BasePart<'a> {
    /// A norm's weight.
    Tensor(&'a Tensor),
    /// The embeddings (dense or quantized).
    Weight(&'a BaseWeight),
    /// A linear layer's weight, with its adapter (if any) to fold in.
    Linear(&'a Linear),
    /// A linear layer's bias, with its adapter (IA³ scales it).
    Bias(&'a Linear),
}

/// A causal language model of the Llama family.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub(super) cfg: LlamaConfig,
    pub(super) embed_tokens: BaseWeight,
    pub(super) layers: Vec<Block>,
    pub(super) norm: Tensor,
    /// `lm_head`; its weight is `embed_tokens` itself when embeddings are tied.
    pub(super) lm_head: Linear,
    pub(super) rope: Rope,
    /// Sliding-window layers' rotary embedding, where its base differs (Gemma 3).
    pub(super) local_rope: Option<Rope>,
    pub(super) dtype: DType,
    pub(super) device: Device,
    /// Prompt tuning's virtual-token embeddings [tokens, hidden], put before the input.
    pub(super) prompt: Option<Tensor>,
    /// Prefix tuning's keys and values [tokens, layers·2·kv_heads·head_dim] (PEFT's layout).
    pub(super) prefix: Option<Tensor>,
    /// Bottleneck adapters per decoder layer (empty when none).
    pub(super) adapters: Vec<LayerAdapters>,
}

/// Takes named weights out of a map, checking each shape against the config.
struct WeightSource<'a> {
    tensors: &'a mut HashMap<String, Tensor>,
    /// Linear layers' weights kept quantized.
    quantized: HashMap<String, QuantizedWeight>,
    origin: &'a str,
    dtype: DType,
    device: &'a Device,
}

impl WeightSource<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            EngineError::bad_file(self.origin, format!("tensor `{name}` is missing"))
        })?;
        if t.dims() != shape {
            return Err(EngineError::bad_file(
                self.origin,
                format!(
                    "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t.to_device(self.device)?.to_dtype(self.dtype)?)
    }

    /// A [rows, cols] weight, quantized where the source holds it so.
    fn weight(&mut self, name: &str, rows: usize, cols: usize) -> Result<BaseWeight> {
        match self.quantized.remove(name) {
            Some(q) if q.dims() != (rows, cols) => Err(EngineError::bad_file(
                self.origin,
                format!(
                    "tensor `{name}` has shape {:?}, the config implies {:?}",
                    q.dims(),
                    (rows, cols)
                ),
            )),
            Some(q) => Ok(BaseWeight::Quantized(Arc::new(q))),
            None => Ok(self.take(name, &[rows, cols])?.into()),
        }
    }

    fn linear(
        &mut self,
        name: String,
        fan_in: usize,
        fan_out: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = self.weight(&format!("{name}.weight"), fan_out, fan_in)?;
        let bias = if bias {
            Some(self.take(&format!("{name}.bias"), &[fan_out])?)
        } else {
            None
        };
        Ok(Linear {
            name,
            weight,
            bias,
            lora: None,
            ia3: None,
        })
    }
}

impl LlamaModel {
    /// Builds the model from named tensors (transformers names), linear layers' weights
    /// taken from `quantized` where they are there. `origin` names the files they came from,
    /// for error messages.
    pub fn from_tensors(
        cfg: &LlamaConfig,
        mut tensors: HashMap<String, Tensor>,
        quantized: HashMap<String, QuantizedWeight>,
        origin: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut src = WeightSource {
            tensors: &mut tensors,
            quantized,
            origin,
            dtype,
            device,
        };
        let embed_tokens = src.weight("model.embed_tokens.weight", cfg.vocab_size, h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let b = cfg.qkv_bias;
            // A pair of norms of `width` the family has, or none.
            let mut norms = |has: bool, [a, b]: [&str; 2], width: usize| -> Result<_> {
                Ok(match has {
                    true => Some((
                        src.take(&format!("{p}.{a}.weight"), &[width])?,
                        src.take(&format!("{p}.{b}.weight"), &[width])?,
                    )),
                    false => None,
                })
            };
            let qk_norm = norms(
                cfg.family.qk_norm,
                ["self_attn.q_norm", "self_attn.k_norm"],
                cfg.head_dim,
            )?;
            let feedforward_norms = norms(
                cfg.family.sandwich_norms,
                ["pre_feedforward_layernorm", "post_feedforward_layernorm"],
                h,
            )?;
            let (attn_in, mlp_in) = if cfg.family.fused_projections {
                let qkv = cfg.q_dim() + 2 * cfg.kv_dim();
                (
                    Inputs::Fused(src.linear(format!("{p}.self_attn.qkv_proj"), h, qkv, b)?),
                    Inputs::Fused(src.linear(format!("{p}.mlp.gate_up_proj"), h, 2 * i, false)?),
                )
            } else {
                (
                    Inputs::Apart([
                        src.linear(format!("{p}.self_attn.q_proj"), h, cfg.q_dim(), b)?,
                        src.linear(format!("{p}.self_attn.k_proj"), h, cfg.kv_dim(), b)?,
                        src.linear(format!("{p}.self_attn.v_proj"), h, cfg.kv_dim(), b)?,
                    ]),
                    Inputs::Apart([
                        src.linear(format!("{p}.mlp.gate_proj"), h, i, false)?,
                        src.linear(format!("{p}.mlp.up_proj"), h, i, false)?,
                    ]),
                )
            };
            layers.push(Block {
                input_layernorm: src.take(&format!("{p}.input_layernorm.weight"), &[h])?,
                attn_in,
                o_proj: src.linear(format!("{p}.self_attn.o_proj"), cfg.q_dim(), h, false)?,
                post_attention_layernorm: src
                    .take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp_in,
                down_proj: src.linear(format!("{p}.mlp.down_proj"), i, h, false)?,
                qk_norm,
                feedforward_norms,
            });
        }
        let norm = src.take("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear {
                name: "lm_head".into(),
                weight: embed_tokens.clone(),
                bias: None,
                lora: None,
                ia3: None,
            }
        } else {
            src.linear("lm_head".into(), h, cfg.vocab_size, false)?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg),
            local_rope: Rope::local(cfg),
            dtype,
            device: device.clone(),
            prompt: None,
            prefix: None,
            adapters: Vec::new(),
        })
    }

    /// The model `cfg` describes with every weight a broadcast zero (no memory behind it):
    /// for checks that need the layers' names and shapes only, such as whether an adapter fits
    /// a base, without loading the base. Never to be run.
    pub fn skeleton(cfg: &LlamaConfig) -> Result<Self> {
        let zero = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        let tensors = cfg
            .weight_shapes()
            .into_iter()
            .map(|(name, shape)| Ok((name, zero.broadcast_as(shape)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Self::from_tensors(
            cfg,
            tensors,
            HashMap::new(),
            "config.json",
            DType::F32,
            &Device::Cpu,
        )
    }

    /// Sets (or clears) the virtual-token embeddings [tokens, hidden] that prompt tuning puts
    /// before every input; outputs cover the real tokens only.
    pub fn set_prompt(&mut self, prompt: Option<Tensor>) {
        self.prompt = prompt;
    }

    /// Sets (or clears) prefix tuning's keys and values [tokens, layers·2·kv_heads·head_dim],
    /// which every layer's attention sees before the input (docs/FORMATS.md §2).
    pub fn set_prefix(&mut self, prefix: Option<Tensor>) {
        self.prefix = prefix;
    }

    /// The bottleneck adapters of each decoder layer, created empty on first use.
    pub fn layer_adapters_mut(&mut self) -> &mut Vec<LayerAdapters> {
        if self.adapters.is_empty() {
            self.adapters = vec![LayerAdapters::default(); self.layers.len()];
        }
        &mut self.adapters
    }

    /// The bottleneck adapters of each decoder layer (empty when none).
    pub fn layer_adapters(&self) -> &[LayerAdapters] {
        &self.adapters
    }

    /// Whether any bottleneck adapter is attached.
    pub fn has_bottleneck_adapters(&self) -> bool {
        self.adapters
            .iter()
            .any(|a| a.attention.is_some() || a.output.is_some())
    }

    /// Prefix tuning's keys and values, if prefix tuning is on.
    pub fn prefix(&self) -> Option<&Tensor> {
        self.prefix.as_ref()
    }

    /// A cache holding the prefix as PEFT lays it out: viewed as [T, 2L, H, D], layer ℓ's keys
    /// are entry 2ℓ and its values 2ℓ + 1, used as they are (no rotary embedding).
    fn prefix_cache(&self, prefix: &Tensor, batch: usize) -> Result<KvCache> {
        let c = &self.cfg;
        let (l, h, d) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
        let t = prefix.dim(0)?;
        let kv = prefix.reshape((t, 2 * l, h, d))?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(kv
                .narrow(1, i, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .broadcast_as((batch, h, t, d))?
                .contiguous()?)
        };
        let layers = (0..l)
            .map(|i| Ok(Some((part(2 * i)?, part(2 * i + 1)?))))
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }

    /// The virtual-token embeddings, if prompt tuning is on.
    pub fn prompt(&self) -> Option<&Tensor> {
        self.prompt.as_ref()
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every linear layer (the targets PEFT methods can wrap), `lm_head` last.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out: Vec<&mut Linear> = self
            .layers
            .iter_mut()
            .flat_map(Block::linears_mut)
            .collect();
        out.push(&mut self.lm_head);
        out
    }

    /// Every linear layer, read-only.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out: Vec<&Linear> = self.layers.iter().flat_map(Block::linears).collect();
        out.push(&self.lm_head);
        out
    }

    /// Every base weight by its transformers name (a tied `lm_head` is not listed twice).
    /// Used to make chosen weights trainable and to write a merged model.
    pub fn base_weights_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out: Vec<(String, &mut Tensor)> = Vec::new();
        if let BaseWeight::Dense(embed) = &mut self.embed_tokens {
            out.push(("model.embed_tokens.weight".into(), embed));
        }
        for (l, b) in self.layers.iter_mut().enumerate() {
            let (norms, linears) = b.parts_mut();
            for (name, norm) in norms {
                out.push((format!("model.layers.{l}.{name}.weight"), norm));
            }
            for lin in linears {
                // Quantized weights are frozen for good (`dequantize_base` widens them).
                if let BaseWeight::Dense(w) = &mut lin.weight {
                    out.push((format!("{}.weight", lin.name), w));
                }
                if let Some(bias) = lin.bias.as_mut() {
                    out.push((format!("{}.bias", lin.name), bias));
                }
            }
        }
        out.push(("model.norm.weight".into(), &mut self.norm));
        if let (false, BaseWeight::Dense(w)) =
            (self.cfg.tie_word_embeddings, &mut self.lm_head.weight)
        {
            out.push(("lm_head.weight".into(), w));
        }
        out
    }

    /// The block format of the base's quantized weights (the most common one), if any.
    pub fn base_quantization(&self) -> Option<super::quantized::Format> {
        let linears = self.linears();
        super::quantized::most_common(
            linears
                .iter()
                .filter_map(|l| l.weight.quantized())
                .map(|q| q.format()),
        )
    }

    /// Widens every quantized base weight to the model's dtype (for writing a merged model).
    pub fn dequantize_base(&mut self) -> Result<()> {
        let widen = |w: &mut BaseWeight| -> Result<()> {
            if let BaseWeight::Quantized(q) = w {
                *w = BaseWeight::Dense(q.dequantize(&q.device())?);
            }
            Ok(())
        };
        widen(&mut self.embed_tokens)?;
        for lin in self.linears_mut() {
            widen(&mut lin.weight)?;
        }
        self.retie();
        Ok(())
    }

    /// Every base weight by its transformers name, in the order `base_weights_mut` lists them
    /// (a tied `lm_head` once), read-only and whatever it is held as: what a merged export
    /// writes one at a time.
    pub fn base_parts(&self) -> Vec<(String, BasePart<'_>)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            BasePart::Weight(&self.embed_tokens),
        )];
        for (l, b) in self.layers.iter().enumerate() {
            for (name, norm) in b.norms() {
                out.push((
                    format!("model.layers.{l}.{name}.weight"),
                    BasePart::Tensor(norm),
                ));
            }
            for lin in b.linears() {
                out.push((format!("{}.weight", lin.name), BasePart::Linear(lin)));
                if lin.bias.is_some() {
                    out.push((format!("{}.bias", lin.name), BasePart::Bias(lin)));
                }
            }
        }
        out.push(("model.norm.weight".into(), BasePart::Tensor(&self.norm)));
        if !self.cfg.tie_word_embeddings {
            out.push(("lm_head.weight".into(), BasePart::Linear(&self.lm_head)));
        }
        out
    }

    /// Re-points a tied `lm_head` at the (possibly replaced) embedding tensor.
    pub fn retie(&mut self) {
        if self.cfg.tie_word_embeddings {
            self.lm_head.weight = self.embed_tokens.clone();
        }
    }

    /// Final hidden states [batch, seq, hidden] for `input_ids` [batch, seq] (u32).
    /// With a cache, the ids continue the cached positions and the cache is extended.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        // Prefix tuning: every layer starts from the prefix's keys and values (a caller's
        // cache gets them on its first use).
        let mut cache = cache;
        let mut own_cache = None;
        if let Some(prefix) = &self.prefix {
            if cache.as_ref().is_none_or(|c| c.is_empty()) {
                let filled = self.prefix_cache(prefix, batch)?;
                match cache.as_mut() {
                    Some(c) => **c = filled,
                    None => own_cache = Some(filled),
                }
            }
        }
        // A cache of this call's own holds only the prefix (training, scoring): no reason to
        // leave the whole-layer op, which takes the prefix's keys and values itself.
        let prefix_only = own_cache.is_some();
        let mut cache = match cache {
            Some(c) => Some(c),
            None => own_cache.as_mut(),
        };
        let start = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mut x =
            self.embed(&input_ids.flatten_all()?)?
                .reshape((batch, seq, self.cfg.hidden_size))?;
        // Prompt tuning: the virtual tokens come first (once; a cache already holds them), at
        // positions 0..T, as PEFT concatenates them to the input embeddings.
        let virtual_tokens = match (&self.prompt, start) {
            (Some(p), 0) => {
                let t = p.dim(0)?;
                let p = p
                    .unsqueeze(0)?
                    .broadcast_as((batch, t, self.cfg.hidden_size))?;
                x = Tensor::cat(&[&p.contiguous()?, &x], 1)?;
                t
            }
            _ => 0,
        };
        let seq = seq + virtual_tokens;
        let tables = |rope: &Rope| rope.tables(start, seq, self.dtype, &self.device);
        let full = tables(&self.rope)?;
        let local = self.local_rope.as_ref().map(tables).transpose()?;
        // Built only for the composed attention: at long sequences it is megabytes.
        let masks = if blocks::needs_mask(&x, seq, start + seq, self.cfg.sliding_window) {
            let windowed = self
                .cfg
                .sliding_window
                .map(|w| self.causal_mask(seq, start, Some(w)))
                .transpose()?;
            Some((self.causal_mask(seq, start, None)?, windowed))
        } else {
            None
        };
        let pos = Positions { full, local, masks };
        if let Some(c) = cache.as_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        // A half-precision model whose layers run as fused CPU ops keeps the residual stream
        // between them in f32, as PyTorch's autocast does: each op computes in f32 anyway, so
        // this saves a rounding and a widening per layer, and the stream's gradients are
        // summed in f32 (candle's half-precision adds of them were a tenth of a 135M step).
        if cache.is_none() && x.dtype() != DType::F32 && fused::applies(&x) {
            x = x.to_dtype(DType::F32)?;
        }
        for (l, block) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[l]);
            let layer = LayerInput {
                index: l,
                adapters: self.adapters.get(l),
                cache: layer_cache,
                prefix_only,
            };
            x = self.block_forward(block, layer, &x, &pos, ctx)?;
        }
        let h = self.norm(&x.to_dtype(self.dtype)?, &self.norm)?;
        Ok(h.narrow(1, virtual_tokens, seq - virtual_tokens)?)
    }

    /// Logits [batch, seq, vocab] for `input_ids` [batch, seq].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, cache, ctx)?;
        self.logits(&h, ctx)
    }

    /// Mean next-token loss of `input_ids` [batch, seq] against `targets` [batch, seq] (u32),
    /// counting positions by their `weights` [batch, seq]; returns `(loss, counted positions)`.
    /// A frozen, unadapted head computes it chunk by chunk without whole logits.
    pub fn loss(
        &self,
        input_ids: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, f64)> {
        let h = self.hidden_states(input_ids, None, ctx)?;
        let (b, t, hidden) = h.dims3()?;
        let h = h.reshape((b * t, hidden))?;
        let head = &self.lm_head;
        // A plain head, frozen or trained; adapted heads compose their logits.
        let plain = head.lora.is_none() && head.ia3.is_none() && head.bias.is_none();
        blocks::head_loss(
            &h,
            Some(&head.weight).filter(|_| plain),
            |h| self.logits(h, ctx),
            &targets.flatten_all()?,
            &weights.flatten_all()?,
            self.cfg.final_softcap,
        )
    }

    /// Applies `lm_head` to hidden states, soft-capped where the model caps its logits
    /// (Gemma 2: `cap · tanh(logit / cap)`).
    pub fn logits(&self, hidden: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        crate::ops::soft_cap(self.lm_head.forward(hidden, ctx)?, self.cfg.final_softcap)
    }

    /// How layer `l`'s queries attend: the model's score factor and cap, the layer's window.
    pub(super) fn attend(&self, l: usize) -> Attend {
        let c = &self.cfg;
        Attend {
            scale: c.attention_scale,
            window: c.window(l),
            softcap: c.attn_softcap,
        }
    }

    /// RMSNorm with the model's epsilon and norm offset.
    fn norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        blocks::rms_norm(
            x,
            weight,
            self.cfg.rms_norm_eps,
            self.cfg.family.norm_offset,
        )
    }

    /// Additive mask [seq, start + seq]: 0 where query i may see key j (causally, and within
    /// `window` positions), -inf elsewhere.
    fn causal_mask(&self, seq: usize, start: usize, window: Option<usize>) -> Result<Tensor> {
        let total = start + seq;
        let attend = Attend {
            scale: 1.0,
            window,
            softcap: None,
        };
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j <= start + i && j >= attend.first_key(start + i) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Ok(Tensor::from_vec(mask, (seq, total), &self.device)?.to_dtype(self.dtype)?)
    }

    /// The layer `index` as one op's parts, where its norms are frozen, it has no
    /// bottleneck adapter and its projections are frozen with plain LoRA or nothing.
    /// `generic`: for the device-generic layer, which serves every method: DoRA, IA³, a
    /// prefix's keys and values, bottleneck adapters, trained weights and norms (a
    /// projection with an adapter stays frozen). Both serve every family.
    fn layer_parts<'a>(
        &self,
        b: &'a Block,
        index: usize,
        adapters: Option<&'a LayerAdapters>,
        ctx: &ForwardCtx,
        generic: Option<super::generic::layer::Extras<'a>>,
    ) -> Option<fused::layer::LayerParts<'a>> {
        let c = &self.cfg;
        let linears = b.linears();
        let served = match generic {
            Some(_) => linears
                .iter()
                .all(|l| l.is_frozen() || (l.lora.is_none() && l.ia3.is_none())),
            None => {
                adapters.is_none_or(|a| a.attention.is_none() && a.output.is_none())
                    && b.norms_frozen()
                    && linears.iter().all(|l| {
                        l.is_frozen()
                            && l.ia3.is_none()
                            && l.lora.as_ref().is_none_or(|lo| lo.magnitude.is_none())
                    })
            }
        };
        if !served {
            return None;
        }
        let parts = linears.iter().map(|l| l.parts()).collect();
        // Dropout masks drawn in the order the composed ops draw them: the same masks.
        let dropout = linears
            .iter()
            .map(|l| l.lora.as_ref().and_then(|lo| ctx.draw_dropout(lo.dropout)))
            .collect();
        let (post_norm, output_norms) = match &b.feedforward_norms {
            Some((pre, post)) => (pre, Some((&b.post_attention_layernorm, post))),
            None => (&b.post_attention_layernorm, None),
        };
        Some(fused::layer::LayerParts {
            input_norm: &b.input_layernorm,
            post_norm,
            output_norms,
            qk_norm: b.qk_norm.as_ref().map(|(q, k)| (q, k)),
            norm_offset: c.family.norm_offset,
            activation: c.activation,
            attend: self.attend(index),
            ia3: linears.iter().map(|l| l.ia3.as_ref()).collect(),
            linears: parts,
            dropout,
            prefix: generic.and_then(|g| g.prefix),
            adapters: generic.and(adapters),
            eps: c.rms_norm_eps,
            q_heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            recompute: ctx.checkpointing(),
        })
    }

    fn block_forward(
        &self,
        b: &Block,
        layer: LayerInput,
        x: &Tensor,
        pos: &Positions,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let LayerInput {
            index,
            adapters,
            cache,
            prefix_only,
        } = layer;
        // Training and scoring run the whole block as one op; decoding keeps the cache. The
        // generic layer also takes a prefix's keys and values.
        let (cos, sin) = pos.rotary(self.cfg.window(index).is_some());
        if cache.is_none() && fused::applies(x) {
            if let Some(parts) = self.layer_parts(b, index, adapters, ctx, None) {
                return fused::layer::decoder_layer(x, &parts, cos, sin);
            }
        }
        // The generic layer: on a GPU; and on the CPU where checkpointing is asked for and
        // the fused layer cannot serve the layer (the single fused ops would ignore it).
        let generic = super::generic::applies(x) || (fused::applies(x) && ctx.checkpointing());
        if (cache.is_none() || prefix_only) && generic {
            let prefix = cache.as_ref().and_then(|c| c.as_ref()).map(|(k, v)| (k, v));
            let extras = super::generic::layer::Extras { prefix };
            if let Some(parts) = self.layer_parts(b, index, adapters, ctx, Some(extras)) {
                // In the model's dtype: a fused layer before hands on its stream in f32.
                let x = x.to_dtype(self.dtype)?;
                return super::generic::layer::decoder_layer(&x, &parts, cos, sin);
            }
        }
        // The composed ops take the stream in the model's dtype (a fused layer before kept it
        // in f32).
        let x = &x.to_dtype(self.dtype)?;
        // The residual stream after a sublayer: plain, or through its bottleneck adapter.
        let join = |out: Tensor, input: &Tensor, site: Site| -> Result<Tensor> {
            match adapters.and_then(|a| a.at(site)) {
                Some(adapter) => adapter.apply(&out, input),
                None => Ok((input + out)?),
            }
        };
        let h = self.norm(x, &b.input_layernorm)?;
        let mut attn = self.attention(b, index, &h, pos, cache, ctx)?;
        // Gemma: the attention's output is normed, and the MLP has norms of its own.
        let mlp_norm = match &b.feedforward_norms {
            Some((pre, _)) => {
                attn = self.norm(&attn, &b.post_attention_layernorm)?;
                pre
            }
            None => &b.post_attention_layernorm,
        };
        let x = join(attn, x, Site::Attention)?;
        let h = self.norm(&x, mlp_norm)?;
        let i = self.cfg.intermediate_size;
        let [gate, up] = b.mlp_in.forward(&h, [i, i], ctx)?;
        let act = blocks::gated(&gate, &up, self.cfg.activation)?;
        let mut out = b.down_proj.forward(&act, ctx)?;
        if let Some((_, post)) = &b.feedforward_norms {
            out = self.norm(&out, post)?;
        }
        join(out, &x, Site::Output)
    }

    /// Grouped-query attention without repeating keys: the query heads that share a key
    /// head are stacked along the sequence axis, so one matmul serves the whole group.
    fn attention(
        &self,
        b: &Block,
        layer: usize,
        x: &Tensor,
        pos: &Positions,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let window = c.window(layer);
        let (cos, sin) = pos.rotary(window.is_some());
        let (batch, seq, _) = x.dims3()?;
        let (hq, hkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let split = |t: Tensor, n: usize| t.reshape((batch, seq, n, d));
        let [q, k, v] = b
            .attn_in
            .forward(x, [c.q_dim(), c.kv_dim(), c.kv_dim()], ctx)?;
        let (mut q, mut k) = (split(q, hq)?, split(k, hkv)?);
        if let Some((q_norm, k_norm)) = &b.qk_norm {
            q = self.norm(&q, q_norm)?;
            k = self.norm(&k, k_norm)?;
        }
        let q = blocks::rope_heads(&q, cos, sin)?;
        let mut k = blocks::rope_heads(&k, cos, sin)?;
        let mut v = split(v, hkv)?.transpose(1, 2)?.contiguous()?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            // Stored detached: with an adapter's variables in the graph, a tracked cache
            // would keep every earlier step's cache alive through its `cat` (O(T²) memory
            // in the generated length). This forward pass still uses the tracked k and v.
            *slot = Some((k.detach(), v.detach()));
        }
        let out = blocks::attention(&q, &k, &v, pos.mask(window.is_some()), self.attend(layer))?;
        b.o_proj.forward(&out, ctx)
    }

    /// The embeddings of `ids` [n] as the model reads them [n, hidden]: in its dtype, scaled
    /// where the family scales them (Gemma's √hidden, rounded to the dtype as transformers'
    /// `embed_scale.to(weight.dtype)`).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.embed_tokens.rows(ids)?.to_dtype(self.dtype)?;
        match self.cfg.embedding_scale() {
            Some(scale) => {
                let scale = Tensor::new(scale as f32, rows.device())?.to_dtype(self.dtype)?;
                Ok(rows.broadcast_mul(&scale)?)
            }
            None => Ok(rows),
        }
    }

    /// The embedding matrix [vocab, hidden].
    pub fn embed_tokens(&self) -> &BaseWeight {
        &self.embed_tokens
    }

    /// Reads the last-dim size of `lm_head` (the vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    /// Logits [batch, vocab] of the last position only, for decoding.
    pub fn last_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let ctx = ForwardCtx::eval();
        let h = self.hidden_states(input_ids, Some(cache), &ctx)?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        Ok(self.logits(&last, &ctx)?.squeeze(1)?.to_dtype(DType::F32)?)
    }
}

/// What one decoder layer is given besides its input: its bottleneck adapters, its slot of
/// the KV cache, and whether that cache holds only the prefix (this call's own).
struct LayerInput<'c> {
    index: usize,
    adapters: Option<&'c LayerAdapters>,
    cache: Option<&'c mut Option<(Tensor, Tensor)>>,
    prefix_only: bool,
}
