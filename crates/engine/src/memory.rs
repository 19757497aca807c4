//! Peak-memory prediction before training, from config.json, the method, batch size, sequence
//! length and dtype alone.
//!
//! The model follows how the engine trains: every tensor the forward pass creates stays alive
//! in the autograd graph until the backward pass ends, so activations are the sum of those
//! tensors' sizes (counted op by op from `model::llama`), plus the loss head, plus the
//! gradients and AdamW moments of what is trained. On the CPU the fused kernels
//! (`model::fused`) keep far fewer tensors (no attention scores, no [tokens, vocab] logits)
//! than candle's composed ops elsewhere; each path has its count. Factors measured on
//! SmolLM2-135M (`bench`, see docs/BENCHMARKS.md) account for the backward pass's temporaries
//! and the allocator's slack.

mod optimizer;
mod t5;

use candle_core::DType;
use serde::Serialize;

pub use t5::estimate_t5;

use crate::error::Result;
use crate::model::quantized::{self, BaseFormats};
use crate::model::LlamaConfig;
use crate::peft::target::layer_index;
use crate::peft::{MethodConfig, MethodKind};
use crate::plan::count_params;

/// Activations are multiplied by this for the backward pass's gradient temporaries and the
/// allocator's retained buffers (fitted to measured peaks): composed ops, fused kernels.
const ACTIVATION_FACTOR: f64 = 1.5;
const FUSED_ACTIVATION_FACTOR: f64 = 1.15;
/// Rows of a quantized head widened at once per thread (tiles of `fused::quantized`).
const QUANTIZED_HEAD_ROWS: f64 = 256.0;
/// The loss head holds this many f32 [tokens, vocab] tensors at its peak: logits, shifted,
/// exponentials and log-probabilities from the forward pass, their gradients and the
/// allocator's slack in the backward pass (fitted to measured peaks).
const LOSS_HEAD_TENSORS: f64 = 7.5;
/// bf16 mixed precision (composed ops): what the f32 islands add, in bytes per decoder layer
/// and attention score, and per layer and hidden-state element. Norms and softmax run in f32
/// (`ops::in_f32`) and keep f32 copies of their inputs and outputs for the backward pass, and
/// the loss takes an f32 copy of the logits. Fitted to measured CPU peaks of the composed ops
/// (`PEFT_STUDIO_FUSED=off`; SmolLM2-135M, batch 2 × 64 to 4 × 128, within 5%), where
/// products also widen bf16 to f32; GPUs multiply bf16 natively, so there they are an upper
/// bound.
const MIXED_SCORE_BYTES: f64 = 23.0;
const MIXED_HIDDEN_BYTES: f64 = 55.0;
/// The process itself: code, tokenizer, allocator arenas, thread stacks.
const PROCESS_BYTES: u64 = 120 << 20;
/// On a GPU, device memory that is not the run's tensors: the CUDA context with candle's
/// kernels loaded, cuBLAS's workspace, the caching allocator's slack.
const GPU_RUNTIME_BYTES: u64 = 768 << 20;
/// The device-generic layer's backward pass holds about this many f32 tensors of the
/// intermediate width at once (SwiGLU's widened inputs, sigmoid, products and gradients)
/// and this many of the hidden width; and an attention block's scores about this many times
/// (probabilities, their gradient, the difference and its narrowed copy).
const GENERIC_INTERMEDIATE_TEMPS: f64 = 8.0;
const GENERIC_HIDDEN_TEMPS: f64 = 8.0;
const GENERIC_SCORE_TEMPS: f64 = 5.0;
/// The generic loss head holds this many f32 tensors of one chunk's logits at once
/// (logits, shifted, exponentials, one-hot, softmax, its gradient).
const GENERIC_HEAD_TENSORS: f64 = 6.0;
/// The generic layer's activations are multiplied by this for the allocator's retained
/// buffers and the backward pass's transient copies (fitted to measured CPU peaks of the
/// layer under `PEFT_STUDIO_FUSED=generic`: a 1.07B Llama-shaped model at 1 × 2,048 tokens,
/// f32 and bf16, docs/BENCHMARKS.md; both needed 1.43–1.46).
const GENERIC_ACTIVATION_FACTOR: f64 = 1.45;

/// Predicted peak memory of a training run, by part, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// The base model's weights (the method's own parameters included).
    pub weights: u64,
    /// Gradients and AdamW's two moments of the trained parameters.
    pub optimizer: u64,
    /// Tensors the forward pass keeps for the backward pass, through the decoder layers.
    pub activations: u64,
    /// The language-model head and the cross-entropy over the vocabulary.
    pub loss_head: u64,
    /// The optimiser step's temporaries (after the backward pass: they take the place of
    /// the activations and the loss head), large where whole weights are trained.
    pub step: u64,
    /// Loading, before training (`model::load`: the file mapped, tensor by tensor): the
    /// weights plus the largest tensor in flight; on a GPU, the host's part of it only (the
    /// tensor in flight). With small batches this is the CPU's peak.
    pub loading: u64,
    /// The process itself.
    pub process: u64,
    /// On a GPU: device memory outside the run's tensors (context, libraries); 0 on the CPU.
    pub gpu_runtime: u64,
}

impl MemoryEstimate {
    fn training(&self) -> u64 {
        self.weights + self.optimizer + (self.activations + self.loss_head).max(self.step)
    }

    /// Whether this is a GPU's estimate (device memory and host memory apart).
    pub fn on_gpu(&self) -> bool {
        self.gpu_runtime > 0
    }

    /// The predicted peak of the memory training runs in: on the CPU training's or
    /// loading's, whichever is higher, plus the process; on a GPU the device's memory.
    pub fn total(&self) -> u64 {
        if self.on_gpu() {
            self.training() + self.gpu_runtime
        } else {
            self.training().max(self.loading) + self.process
        }
    }

    /// The host's peak: on a GPU, loading's tensor in flight and the process; on the CPU,
    /// [`Self::total`].
    pub fn host(&self) -> u64 {
        if self.on_gpu() {
            self.loading + self.process
        } else {
            self.total()
        }
    }
}

/// What one training step looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    /// Examples per micro-batch.
    pub batch: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// The dtype of weights and activations.
    pub dtype: DType,
    /// Whether training runs on the CPU (where the fused kernels serve f32 and bf16).
    pub cpu: bool,
    /// Gradient checkpointing (`TrainConfig::gradient_checkpointing`).
    pub checkpointing: bool,
    /// The block formats the base's weights are held in (`model::quantized`), or `None`
    /// when they are all held in `dtype`.
    pub quantized: Option<BaseFormats>,
}

/// Which kernels compute the decoder layers (`model::fused::kernels`, by device and dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fused,
    Generic,
    Composed,
}

impl StepShape {
    fn path(&self) -> Path {
        use crate::model::fused::{kernels, Kernels};
        let floats = matches!(self.dtype, DType::F32 | DType::BF16 | DType::F16);
        match kernels() {
            _ if !floats => Path::Composed,
            Kernels::Cpu if self.cpu => Path::Fused,
            Kernels::Cpu | Kernels::Generic => Path::Generic,
            Kernels::Composed => Path::Composed,
        }
    }
}

/// Predicts the peak memory of training `method` on the model `cfg` describes.
pub fn estimate(
    cfg: &LlamaConfig,
    method: &MethodConfig,
    step: StepShape,
) -> Result<MemoryEstimate> {
    let counts = count_params(cfg, method)?;
    let elem = step.dtype.size_in_bytes() as u64;
    // Virtual tokens lengthen every sequence the layers see (prompt tuning) or every
    // attention's keys (prefix tuning).
    let (extra_queries, extra_keys) = match method.kind {
        MethodKind::PromptTuning => (method.num_virtual_tokens, method.num_virtual_tokens),
        MethodKind::PrefixTuning => (0, method.num_virtual_tokens),
        _ => (0, 0),
    };
    let b = step.batch as f64;
    let t = (step.seq_len + extra_queries) as f64;
    let keys = t + extra_keys as f64;
    let n = b * t;
    let (d, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let q = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let k = (cfg.num_key_value_heads * cfg.head_dim) as f64;
    let scores = b * cfg.num_attention_heads as f64 * t * keys;
    let tracked = layers_with_gradients(cfg, method)? as f64;
    let vocab = cfg.vocab_size as f64;
    // The fused kernels compute in f32 whatever the dtype: in half precision they widen the
    // tensors they read (`model::fused::view`), the weights of the layer at hand and the
    // loss head's among them; where the CPU multiplies bf16 (`bf16_matmul`), they pack them
    // into copies of bf16 pairs instead.
    let native = step.dtype == DType::BF16 && crate::model::fused::bf16_matmul::available();
    let widened = |params: f64| match (elem < 4, native) {
        (false, _) => 0.0,
        (true, false) => params * 4.0,
        (true, true) => params * 2.0,
    };
    let path = step.path();
    // On the CPU the layers the fused layer cannot serve run the generic layer where
    // checkpointing is asked for (`LlamaModel::block_forward`), the single fused ops else.
    let whole_fused = path == Path::Fused && runs_whole_layers(cfg, method)?;
    let layer_path = match path {
        Path::Fused if !whole_fused && step.checkpointing => Path::Generic,
        p => p,
    };
    // The fused head keeps the hidden states' gradient and a chunk of logits per thread,
    // and for a trained head its weight's gradient.
    let fused_head = |role: HeadRole| {
        let weight_grad = if role == HeadRole::Trained {
            vocab * d * 4.0
        } else {
            0.0
        };
        // A quantized head is widened a tile per thread at a time (f32 and bf16).
        let head_weight = match quantized_head(cfg, step) {
            true => 2.0 * 6.0 * QUANTIZED_HEAD_ROWS * d,
            false => widened(vocab * d),
        };
        // One chunk's logits (`fused::cross_entropy::chunk_rows` rows, or every token where
        // fewer).
        let chunk = crate::model::fused::cross_entropy::chunk_rows(cfg.vocab_size, cfg.hidden_size);
        let rows = n.min(chunk as f64);
        (n * d + rows * vocab) * 4.0 + head_weight + weight_grad
    };
    let (activations, loss_head) = if layer_path == Path::Fused {
        let acts = if whole_fused {
            // Per decoder layer (`model::fused::layer`), in f32: the rotated queries and the
            // attention output, keys and values, the residual stream between the sublayers,
            // gate and up; in the model's dtype, the layer's output (the next one's input).
            // With checkpointing only the layer's input, and one layer's worth while it is
            // recomputed. Once, the backward pass's temporaries of the layer at hand
            // (SwiGLU's output and three gradients of its width, six of the hidden width).
            let inside = 4.0 * (2.0 * (n * q + n * k + n * i) + n * d);
            let input = n * d * elem as f64;
            let temporaries = 4.0 * (4.0 * n * i + 8.0 * n * d);
            let layer_weights = match step.quantized {
                None => widened(d * (2.0 * q + 2.0 * k) + 3.0 * d * i),
                // One tile of the widest projection (f32 and its bf16 copy) and its columns
                // of the output (`fused::quantized`).
                Some(_) => 6.0 * n.max(128.0) * d.max(i) + 4.0 * n * n.max(128.0),
            };
            kept_by_layers(inside, input, tracked, step.checkpointing) + temporaries + layer_weights
        } else {
            // Per decoder layer: the two norms' outputs, o_proj's and down_proj's outputs and
            // the two residual sums ([n, d] each); queries through projection, rotation and
            // attention output; keys through projection and rotation, values and their
            // head-major copy; the MLP's gate, up and gated product.
            let mut per_layer = 6.0 * n * d + 3.0 * n * q + 4.0 * n * k + 3.0 * n * i;
            per_layer += adapter_activations(cfg, method, n, true)?;
            FUSED_ACTIVATION_FACTOR * (per_layer * tracked + 2.0 * n * d) * elem as f64
        };
        // An adapted head composes its logits.
        let head = match head_role(cfg, method)? {
            HeadRole::Adapted => LOSS_HEAD_TENSORS * n * vocab * 4.0,
            role => fused_head(role),
        };
        (acts as u64, head as u64)
    } else if layer_path == Path::Generic {
        // Per decoder layer (`model::generic::layer`), in the model's dtype: the roped
        // queries and the attention output, keys and values, the residual stream between
        // the sublayers, gate and up, and the layer's output (the next one's input). With
        // checkpointing only the input, and one layer's worth while it is recomputed. Once,
        // the backward pass's temporaries of the layer at hand and one attention block.
        let e = elem as f64;
        // (A prefix's keys and values are kept with the layer's own.) Where the family norms
        // them, the q/k heads before their norms and the two sublayers' outputs before theirs.
        let qk_raw = if cfg.family.qk_norm { n * (q + k) } else { 0.0 };
        let outputs = if cfg.family.sandwich_norms {
            2.0 * n * d
        } else {
            0.0
        };
        // A bottleneck adapter reads its sublayer's output, kept where no norm keeps it.
        let adapter_reads = match method.kind {
            MethodKind::Houlsby | MethodKind::Pfeiffer if !cfg.family.sandwich_norms => {
                let houlsby = method.kind == MethodKind::Houlsby;
                crate::model::adapters::bottleneck::sites(houlsby).len() as f64 * n * d
            }
            _ => 0.0,
        };
        let inside = e
            * (2.0 * (n * q + n * k + n * i)
                + n * d
                + 2.0 * b * extra_keys as f64 * k
                + qk_raw
                + outputs
                + adapter_reads);
        let input = n * d * e;
        // A trained weight's gradient, made in the layer's backward pass, next to candle's
        // zero-filled slot and their sum: the widest projection's, three times.
        let weight_gradient = match method.kind {
            MethodKind::Full | MethodKind::Freeze => 3.0 * e * d * i.max(q),
            _ => 0.0,
        };

        // DoRA's row norms take `W + s·BA` of the widest projection in f32, twice.
        let dora = if method.use_dora {
            2.0 * d * i.max(q)
        } else {
            0.0
        };
        let temporaries = 4.0
            * (GENERIC_INTERMEDIATE_TEMPS * n * i + GENERIC_HIDDEN_TEMPS * n * d + dora)
            + generic_block(scores)
            + dequantized(step, d * i.max(q))
            + weight_gradient;
        let kept = kept_by_layers(inside, input, tracked, step.checkpointing);
        let head = match head_role(cfg, method)? {
            HeadRole::Adapted => LOSS_HEAD_TENSORS * n * vocab * 4.0,
            role if path == Path::Fused => fused_head(role),
            role => generic_head(cfg, role, n, e) + widened_head(cfg, step),
        };
        (
            (GENERIC_ACTIVATION_FACTOR * (kept + temporaries)) as u64,
            head as u64,
        )
    } else {
        // Per decoder layer: two RMSNorms (3 tensors of [n, d] each), queries and keys through
        // projection, head split and RoPE (6.5 each), values (2), scores through scale, mask
        // and softmax (5), the attention output's two copies, o_proj and two residual sums,
        // the MLP's gate, SiLU, up and product ([n, i] each) and down_proj.
        let mut per_layer = 10.0 * n * d + 8.5 * n * (q + k) + 2.0 * n * k + 2.0 * n * q;
        per_layer += 4.0 * n * i + 5.0 * scores;
        per_layer += adapter_activations(cfg, method, n, false)?;
        let acts = ACTIVATION_FACTOR * (per_layer * tracked + 4.0 * n * d);
        let block = dequantized(step, d * i.max(q));
        // Mixed precision's f32 islands, and the head's weight widened to f32 (twice at the
        // peak) for the CPU's products.
        let mixed = if step.dtype == DType::F32 {
            0.0
        } else {
            tracked * (MIXED_SCORE_BYTES * scores + MIXED_HIDDEN_BYTES * n * d)
                + 2.0 * vocab * d * 4.0
        };
        let head = LOSS_HEAD_TENSORS * n * vocab * 4.0;
        ((acts * elem as f64 + mixed + block) as u64, head as u64)
    };
    // Trained weights of freeze and full runs are already among the base weights; adapters
    // add their own. Gradients and both moments are kept in f32.
    let adapter_params = match method.kind {
        MethodKind::Freeze | MethodKind::Full => 0,
        _ => counts.trainable,
    };
    let (quantized_params, quantized_bytes) = match step.quantized {
        Some(formats) => quantized_storage(cfg, formats, elem),
        None => (0, 0),
    };
    let weights = (counts.total - adapter_params - quantized_params) * elem
        + quantized_bytes
        + adapter_params * 4;
    let (param_elem, largest) = optimizer::trained_tensors(
        method.kind,
        elem,
        || cfg.weight_shapes(),
        || crate::peft::freeze::trainable_weight_names(cfg, method),
    )?;
    Ok(MemoryEstimate {
        weights,
        optimizer: optimizer::state_bytes(counts.trainable, param_elem),
        step: optimizer::step_bytes(largest, path == Path::Fused),
        activations,
        loss_head,
        loading: loading_peak(cfg, weights, step),
        process: PROCESS_BYTES,
        gpu_runtime: if step.cpu { 0 } else { GPU_RUNTIME_BYTES },
    })
}

/// Outside the fused kernels a quantized projection is widened whole for each use (f32, then
/// the model's dtype) and dropped after it: the largest one's bytes.
fn dequantized(step: StepShape, params: f64) -> f64 {
    match step.quantized {
        Some(_) => params * (4.0 + step.dtype.size_in_bytes() as f64),
        None => 0.0,
    }
}

/// The parameters held quantized and the bytes they take: the projections in their format
/// (or in the type llama.cpp falls back to for widths its blocks do not divide,
/// `quantized::format_for`; `elem` bytes each where none does), the embeddings and the head
/// in theirs.
pub fn quantized_storage(cfg: &LlamaConfig, formats: BaseFormats, elem: u64) -> (u64, u64) {
    let (mut params, mut bytes) = (0u64, 0u64);
    for (name, shape) in cfg.weight_shapes() {
        let format = if quantized::covers(&name, &shape) {
            quantized::format_for(formats.projections, shape[1])
        } else if name == "model.embed_tokens.weight" {
            formats.embeddings
        } else if name == "lm_head.weight" {
            formats.head
        } else {
            continue;
        };
        let count = shape.iter().product::<usize>() as u64;
        params += count;
        bytes += match format {
            Some(f) => f.bytes(count),
            None => count * elem,
        };
    }
    (params, bytes)
}

/// Outside the fused kernels a quantized head is widened whole for the loss (f32, then the
/// model's dtype).
fn widened_head(cfg: &LlamaConfig, step: StepShape) -> f64 {
    match quantized_head(cfg, step) {
        true => dequantized(step, (cfg.vocab_size * cfg.hidden_size) as f64),
        false => 0.0,
    }
}

/// Whether the LM head is held quantized: an untied head in a quantized format, or tied
/// embeddings that are.
fn quantized_head(cfg: &LlamaConfig, step: StepShape) -> bool {
    step.quantized
        .is_some_and(|f| match cfg.tie_word_embeddings {
            true => f.embeddings.is_some(),
            false => f.head.is_some(),
        })
}

/// Bytes of the temporaries of one block of queries of the generic attention (at most
/// `SCORES_PER_BLOCK` scores of all heads, in f32).
fn generic_block(scores: f64) -> f64 {
    4.0 * GENERIC_SCORE_TEMPS * scores.min(crate::model::generic::SCORES_PER_BLOCK as f64)
}

/// The generic loss head (`generic::cross_entropy`): the hidden states' gradient, one chunk
/// of logits' tensors in f32, a trained head's weight gradient.
fn generic_head(cfg: &LlamaConfig, role: HeadRole, n: f64, elem: f64) -> f64 {
    let (d, vocab) = (cfg.hidden_size as f64, cfg.vocab_size as f64);
    let chunk = crate::model::generic::LOGITS_PER_CHUNK as f64;
    let weight_grad = if role == HeadRole::Trained {
        vocab * d * 4.0
    } else {
        0.0
    };
    n * d * elem + GENERIC_HEAD_TENSORS * chunk.min(n * vocab) * 4.0 + weight_grad
}

/// What the whole-layer ops keep: per layer a gradient flows through, its `input` and what
/// its backward pass reads (`inside`); with checkpointing the inputs, and one layer's inside
/// while it is recomputed.
fn kept_by_layers(inside: f64, input: f64, tracked: f64, checkpointing: bool) -> f64 {
    match checkpointing {
        true => input * tracked + inside * tracked.min(1.0),
        false => (inside + input) * tracked,
    }
}

/// Decoder layers a gradient flows through: from the first that holds a trained parameter
/// to the last, or all where the embeddings or virtual tokens are trained. The layers before
/// build no graph and keep nothing (freeze's last layers, LoRA on `layers_to_transform`).
fn layers_with_gradients(cfg: &LlamaConfig, method: &MethodConfig) -> Result<usize> {
    let all = cfg.num_hidden_layers;
    let trained: Vec<String> = match method.kind {
        MethodKind::Lora => method.lora_targets(cfg)?.into_iter().map(|t| t.0).collect(),
        MethodKind::Ia3 => method.ia3_targets(cfg)?.into_iter().map(|t| t.0).collect(),
        MethodKind::Freeze => crate::peft::freeze::trainable_weight_names(cfg, method)?,
        _ => return Ok(all),
    };
    if trained.iter().any(|name| name.contains("embed_tokens")) {
        return Ok(all);
    }
    let first = trained.iter().filter_map(|name| layer_index(name)).min();
    Ok(first.map_or(0, |first| all - first))
}

/// Whether the CPU's decoder layers run as one op each (`LlamaModel::layer_parts`): frozen
/// layers with LoRA branches (no DoRA; dropout masks are drawn per projection and dropped)
/// or none at all. (The generic layer serves every method.)
fn runs_whole_layers(cfg: &LlamaConfig, method: &MethodConfig) -> Result<bool> {
    Ok(match method.kind {
        MethodKind::Lora => !method.use_dora,
        MethodKind::PromptTuning => true,
        MethodKind::Freeze => !crate::peft::freeze::trainable_weight_names(cfg, method)?
            .iter()
            .any(|w| w.starts_with("model.layers.")),
        _ => false,
    })
}

/// What the method does to `lm_head` (or the embeddings tied to it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadRole {
    Frozen,
    /// Its weight trained (full fine-tuning, freeze): the fused loss also gives its gradient.
    Trained,
    /// A LoRA or IA³ adapter on it: the loss head is computed whole, not by the fused kernel.
    Adapted,
}

fn head_role(cfg: &LlamaConfig, method: &MethodConfig) -> Result<HeadRole> {
    let head = |name: &str| {
        name == "lm_head"
            || name.starts_with("lm_head.")
            || (cfg.tie_word_embeddings && name.contains("embed_tokens"))
    };
    let (trained, adapted) = match method.kind {
        MethodKind::Full => (true, false),
        MethodKind::Freeze => (method.trainable_modules.iter().any(|m| head(m)), false),
        MethodKind::Lora => {
            let targets = method.lora_targets(cfg)?;
            (false, targets.iter().any(|(name, ..)| head(name)))
        }
        MethodKind::Ia3 => {
            let targets = method.ia3_targets(cfg)?;
            (false, targets.iter().any(|(name, ..)| head(name)))
        }
        _ => (false, false),
    };
    Ok(match (trained, adapted) {
        (_, true) => HeadRole::Adapted,
        (true, false) => HeadRole::Trained,
        (false, false) => HeadRole::Frozen,
    })
}

/// Elements an adapter's forward adds per decoder layer for `n` tokens (`fused`: on the fused
/// kernels, where plain LoRA adds none).
fn adapter_activations(
    cfg: &LlamaConfig,
    method: &MethodConfig,
    n: f64,
    fused: bool,
) -> Result<f64> {
    let layers = cfg.num_hidden_layers as f64;
    Ok(match method.kind {
        // x·A, (x·A)·B, its scaling and the sum with the frozen output; dropout adds a mask and
        // the dropped input; DoRA the rescaled output and its sum.
        MethodKind::Lora => {
            let r = method.r as f64;
            let dropout = method.lora_dropout > 0.0;
            // On the fused kernels only DoRA gets here (plain LoRA runs fused layers).
            // Dropout's mask, dropped input and their gradients (measured: 6 inputs' worth
            // per target next to the fused base product).
            let dropout_inputs = if fused { 6.0 } else { 2.0 };
            let per_token: f64 = method
                .lora_targets(cfg)?
                .iter()
                .map(|(_, fan_in, fan_out)| {
                    let (fi, fo) = (*fan_in as f64, *fan_out as f64);
                    r + 3.0 * fo
                        + if dropout { dropout_inputs * fi } else { 0.0 }
                        + if method.use_dora { 2.0 * fo } else { 0.0 }
                })
                .sum();
            n * per_token / layers
        }
        MethodKind::Ia3 => {
            let per_token: f64 = method
                .ia3_targets(cfg)?
                .iter()
                .map(|(_, fi, fo, ff)| if *ff { *fi as f64 } else { *fo as f64 })
                .sum();
            n * per_token / layers
        }
        // Down projection, activation, up projection and residual sum per site.
        MethodKind::Houlsby | MethodKind::Pfeiffer => {
            let w =
                crate::model::adapters::bottleneck::width(cfg.hidden_size, method.reduction_factor)
                    as f64;
            let sites =
                crate::model::adapters::bottleneck::sites(method.kind == MethodKind::Houlsby).len()
                    as f64;
            sites * n * (2.0 * w + 2.0 * cfg.hidden_size as f64)
        }
        _ => 0.0,
    })
}

/// Loading's peak (`model::load`): each tensor is copied out of the mapped file, converted
/// and (on a GPU) moved, and its pages released, so at most the largest tensor is in flight
/// next to the weights already loaded: its mapped pages, and its copy in the file's dtype
/// where that copy is not kept as the weight itself (another dtype, or a GPU). Measured:
/// 290-360 MiB over the weights for a bf16-stored 1B model run in f32 whose embedding is 192
/// MiB; Gemma 3 270M stored and run in f32 (a 640 MiB embedding), 1.55-1.72 GiB against
/// 1.74 predicted. On a GPU the weights are in device memory, not the host's. A GGUF base
/// reads its largest tensor, the embeddings, in their block format.
fn loading_peak(cfg: &LlamaConfig, weights: u64, step: StepShape) -> u64 {
    let largest = (cfg.vocab_size.max(cfg.intermediate_size) * cfg.hidden_size) as u64;
    let kept_as_loaded = step.cpu && cfg.stored_dtype == step.dtype;
    let in_flight = match step.quantized.and_then(|f| f.embeddings) {
        Some(f) => 2 * f.bytes(largest),
        None if kept_as_loaded => largest * cfg.stored_dtype.size_in_bytes() as u64,
        None => 2 * largest * cfg.stored_dtype.size_in_bytes() as u64,
    };
    if step.cpu {
        weights + in_flight
    } else {
        in_flight
    }
}

/// Whether a CPU run of `total` bytes fits the memory this machine has available now, in a
/// sentence (`None` where the system does not say).
pub fn machine_fit(total: u64) -> Option<String> {
    let available = crate::sysinfo::available_memory_bytes()?;
    Some(if total <= available {
        format!(
            "fits this machine: {} of {} available",
            human_bytes(total),
            human_bytes(available)
        )
    } else {
        format!(
            "does not fit this machine: {} needed, {} available (try gradient checkpointing, a \
             smaller batch or sequence, bf16, or a quantized base)",
            human_bytes(total),
            human_bytes(available)
        )
    })
}

/// The GPU sizes people train on, in GiB (a 24 GB card, a 48 GB card, an 80 GB H100).
const GPU_SIZES_GIB: [u64; 3] = [24, 48, 80];

/// Whether `step` fits each common GPU size, and for the sizes it does not fit, the first
/// change that makes it fit: gradient checkpointing, then halving the micro-batch, then
/// halving the sequence length (the order a person would try them in).
pub fn gpu_fit(cfg: &LlamaConfig, method: &MethodConfig, step: StepShape) -> Result<String> {
    let fits = |s: StepShape, gib: u64| -> Result<bool> {
        Ok(estimate(cfg, method, s)?.total() <= gib << 30)
    };
    // The changes to try, in order: checkpointing; then, with it, halving the batch to 1;
    // then, at batch 1, halving the sequence down to 128 tokens.
    let mut tries = Vec::new();
    let mut s = StepShape {
        checkpointing: true,
        ..step
    };
    if !step.checkpointing {
        tries.push((s, "with gradient checkpointing".to_string()));
    }
    while s.batch > 1 {
        s.batch /= 2;
        tries.push((s, format!("with checkpointing and batch {}", s.batch)));
    }
    while s.seq_len > 128 {
        s.seq_len /= 2;
        let label = format!(
            "with checkpointing, batch {} and {} tokens",
            s.batch, s.seq_len
        );
        tries.push((s, label));
    }
    let weights = estimate(cfg, method, step)?.weights;
    let mut out = Vec::new();
    for gib in GPU_SIZES_GIB {
        if fits(step, gib)? {
            out.push(format!("{gib} GB: fits"));
            continue;
        }
        let mut advice = None;
        for (s, label) in &tries {
            if fits(*s, gib)? {
                advice = Some(label);
                break;
            }
        }
        out.push(match advice {
            Some(label) => format!("{gib} GB: does not fit; fits {label}"),
            None => format!(
                "{gib} GB: does not fit (the weights alone need {})",
                human_bytes(weights)
            ),
        });
    }
    Ok(format!("on a GPU of {}", out.join("; ")))
}

/// `1234567890` bytes → `1.15 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    }
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if self.on_gpu() {
            "GPU memory"
        } else {
            "memory"
        };
        write!(
            f,
            "estimated peak {place}: {} (weights {}, gradients and optimizer {}, activations {}, loss head {}",
            human_bytes(self.total()),
            human_bytes(self.weights),
            human_bytes(self.optimizer),
            human_bytes(self.activations),
            human_bytes(self.loss_head)
        )?;
        if self.step > self.activations + self.loss_head {
            write!(
                f,
                "; the optimiser step's {} after them",
                human_bytes(self.step)
            )?;
        }
        write!(f, ")")?;
        if self.on_gpu() {
            write!(
                f,
                ", CUDA context and libraries {}; host memory {}",
                human_bytes(self.gpu_runtime),
                human_bytes(self.host())
            )?;
        }
        Ok(())
    }
}
