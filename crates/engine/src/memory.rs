//! Peak-memory prediction before training, from config.json, the method, batch size, sequence
//! length and dtype alone.
//!
//! The model follows how the engine trains: every tensor the forward pass creates stays alive
//! in the autograd graph until the backward pass ends, so activations are the sum of those
//! tensors' sizes (counted op by op from `model::llama`), plus the loss head's
//! [tokens, vocab] tensors, plus the gradients and AdamW moments of what is trained. Two
//! factors measured on SmolLM2-135M (`bench`, see docs/BENCHMARKS.md) account for the backward
//! pass's temporaries and the allocator's slack.

use candle_core::DType;
use serde::Serialize;

use crate::error::Result;
use crate::model::LlamaConfig;
use crate::peft::{MethodConfig, MethodKind};
use crate::plan::count_params;

/// Activations are multiplied by this for the backward pass's gradient temporaries and the
/// allocator's retained buffers (fitted to measured peaks).
const ACTIVATION_FACTOR: f64 = 1.5;
/// The loss head holds this many f32 [tokens, vocab] tensors at its peak: logits, shifted,
/// exponentials and log-probabilities from the forward pass, their gradients and the
/// allocator's slack in the backward pass (fitted to measured peaks).
const LOSS_HEAD_TENSORS: f64 = 7.5;
/// The process itself: code, tokenizer, allocator arenas, thread stacks.
const PROCESS_BYTES: u64 = 120 << 20;

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
    /// The process itself.
    pub process: u64,
}

impl MemoryEstimate {
    /// The predicted peak.
    pub fn total(&self) -> u64 {
        self.weights + self.optimizer + self.activations + self.loss_head + self.process
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
    // Per decoder layer: two RMSNorms (3 tensors of [n, d] each), queries and keys through
    // projection, head split and RoPE (6.5 each), values (2), scores through scale, mask and
    // softmax (5), the attention output's two copies, o_proj and two residual sums, the MLP's
    // gate, SiLU, up and product ([n, i] each) and down_proj.
    let mut per_layer = 10.0 * n * d + 8.5 * n * (q + k) + 2.0 * n * k + 2.0 * n * q;
    per_layer += 4.0 * n * i + 5.0 * scores;
    per_layer += adapter_activations(cfg, method, n)?;
    let layers = cfg.num_hidden_layers as f64;
    let activations = (ACTIVATION_FACTOR * (per_layer * layers + 4.0 * n * d)) as u64 * elem;
    let loss_head = (LOSS_HEAD_TENSORS * n * cfg.vocab_size as f64) as u64 * 4;
    // Trained weights of freeze and full runs are already among the base weights; adapters
    // add their own. Gradients and both moments are kept in f32.
    let adapter_params = match method.kind {
        MethodKind::Freeze | MethodKind::Full => 0,
        _ => counts.trainable,
    };
    Ok(MemoryEstimate {
        weights: (counts.total - adapter_params) * elem + adapter_params * 4,
        optimizer: counts.trainable * 3 * 4,
        activations,
        loss_head,
        process: PROCESS_BYTES,
    })
}

/// Elements an adapter's forward adds per decoder layer for `n` tokens.
fn adapter_activations(cfg: &LlamaConfig, method: &MethodConfig, n: f64) -> Result<f64> {
    let layers = cfg.num_hidden_layers as f64;
    Ok(match method.kind {
        // x·A, (x·A)·B, its scaling and the sum with the frozen output; dropout adds a mask and
        // the dropped input; DoRA the rescaled output and its sum.
        MethodKind::Lora => {
            let r = method.r as f64;
            let dropout = method.lora_dropout > 0.0;
            let per_token: f64 = method
                .lora_targets(cfg)?
                .iter()
                .map(|(_, fan_in, fan_out)| {
                    let (fi, fo) = (*fan_in as f64, *fan_out as f64);
                    r + 3.0 * fo
                        + if dropout { 2.0 * fi } else { 0.0 }
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
            let w = crate::peft::bottleneck::width(cfg.hidden_size, method.reduction_factor) as f64;
            let sites =
                crate::peft::bottleneck::sites(method.kind == MethodKind::Houlsby).len() as f64;
            sites * n * (2.0 * w + 2.0 * cfg.hidden_size as f64)
        }
        _ => 0.0,
    })
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
        write!(
            f,
            "estimated peak memory: {} (weights {}, gradients and optimizer {}, activations {}, loss head {})",
            human_bytes(self.total()),
            human_bytes(self.weights),
            human_bytes(self.optimizer),
            human_bytes(self.activations),
            human_bytes(self.loss_head)
        )
    }
}
