//! Peak-memory prediction for a T5: the encoder's and the decoder's blocks counted op by op
//! as [`super::estimate`] counts a decoder-only model on candle's composed ops, the path T5
//! trains on (`model::t5`), with sources and targets of `seq_len` tokens each.

use candle_core::DType;

use super::optimizer::{state_bytes, step_bytes, trained_tensors};
use super::{MemoryEstimate, Path, StepShape, LOSS_HEAD_TENSORS, PROCESS_BYTES};
use crate::error::Result;
use crate::model::t5::{FeedForward, T5Config};
use crate::peft::{MethodConfig, MethodKind};
use crate::plan::count_params_t5;

/// Attention scores kept per score: through bias, mask and softmax, and the backward pass's
/// temporaries at the peak.
const SCORE_TENSORS: f64 = 6.0;
/// bf16 mixed precision: the f32 copies around norms and softmax (`ops::in_f32`), in bytes
/// per kept element.
const MIXED_BYTES: f64 = 2.2;
/// Kept elements are multiplied by this for the backward pass's gradient temporaries and the
/// allocator's retained buffers. The three constants are fitted to `bench` peaks on a
/// t5-small-shaped model (60.5M; LoRA r=8 on q,v, prefix and prompt tuning of 20 tokens;
/// 4 × 128 to 2 × 512 tokens, f32 and bf16: within 9%; docs/BENCHMARKS.md).
const KEPT_FACTOR: f64 = 1.3;

/// Tensors of the feed-forward width one block keeps: `wi`'s output and its ReLU; or
/// `wi_0`, `wi_1`, the tanh-GELU's five steps and the gated product.
fn feed_forward_tensors(kind: FeedForward) -> f64 {
    match kind {
        FeedForward::Relu => 2.0,
        FeedForward::GatedGelu => 8.0,
    }
}

/// What one attention sublayer keeps, in elements: its norm (3 of [n, d]), the queries and
/// their head-major copy, keys and values from `kv_rows` rows and their copies, the scores
/// through bias, mask and softmax (5), the output and its copy, `o`'s output and the sum.
fn attention(n: f64, kv_rows: f64, scores: f64, d: f64, inner: f64) -> f64 {
    3.0 * n * d
        + 2.0 * n * inner
        + 4.0 * kv_rows * inner
        + SCORE_TENSORS * scores
        + 2.0 * n * inner
        + 2.0 * n * d
}

/// Predicts the peak memory of training `method` on the T5 `cfg` describes.
pub fn estimate_t5(
    cfg: &T5Config,
    method: &MethodConfig,
    step: StepShape,
) -> Result<MemoryEstimate> {
    let counts = count_params_t5(cfg, method)?;
    let elem = step.dtype.size_in_bytes() as f64;
    let (prompt, prefix) = match method.kind {
        MethodKind::PromptTuning => (method.num_virtual_tokens as f64, 0.0),
        MethodKind::PrefixTuning => (0.0, method.num_virtual_tokens as f64),
        _ => (0.0, 0.0),
    };
    let b = step.batch as f64;
    let (s, t) = (step.seq_len as f64 + prompt, step.seq_len as f64);
    let (ne, nd) = (b * s, b * t);
    let (d, inner, ff) = (cfg.d_model as f64, cfg.inner_dim() as f64, cfg.d_ff as f64);
    let heads = cfg.num_heads as f64;
    let ff_kept =
        |n: f64| 3.0 * n * d + feed_forward_tensors(cfg.feed_forward) * n * ff + 2.0 * n * d;
    let encoder = attention(ne, ne, b * heads * s * s, d, inner) + ff_kept(ne);
    let decoder = attention(nd, nd + b * prefix, b * heads * t * (t + prefix), d, inner)
        + attention(nd, ne, b * heads * t * s, d, inner)
        + ff_kept(nd);
    // An encoder nothing is trained in keeps no graph: one block's tensors at a time.
    let projections = cfg.projections();
    let names: Vec<String> = projections.iter().map(|p| p.0.clone()).collect();
    let (targets, feedforward) = method.t5_targets(&names)?;
    let trains_encoder = match method.kind {
        MethodKind::PrefixTuning => false,
        MethodKind::PromptTuning | MethodKind::Freeze | MethodKind::Full => true,
        _ => targets.iter().any(|&i| names[i].starts_with("encoder.")),
    };
    let encoder_blocks = match trains_encoder {
        true => cfg.num_layers as f64,
        false => 1.0,
    };
    let kept = encoder * encoder_blocks
        + decoder * cfg.num_decoder_layers as f64
        + adapters(method, &projections, &targets, &feedforward, ne, nd)
        + 4.0 * (ne + nd) * d;
    let activations = KEPT_FACTOR * kept * elem;
    let mixed = match step.dtype {
        DType::F32 => 0.0,
        _ => kept * MIXED_BYTES,
    };
    let vocab = cfg.vocab_size as f64;
    // On the CPU a plain head's product and the loss run in chunks (`T5Model::batch_loss`):
    // the hidden states' gradient and one chunk's logits; a head with an adapter, or the
    // composed ops, keep the whole logits.
    let adapted_head = targets.iter().any(|&i| names[i] == "lm_head");
    let loss_head = match step.path() == Path::Fused && !adapted_head {
        true => {
            let chunk = crate::model::fused::cross_entropy::chunk_rows(cfg.vocab_size, cfg.d_model);
            (nd * d + nd.min(chunk as f64) * vocab) * 4.0
        }
        false => LOSS_HEAD_TENSORS * nd * vocab * 4.0,
    };
    // Freeze and full runs train weights that are already the base's.
    let adapter = match method.kind {
        MethodKind::Freeze | MethodKind::Full => 0,
        _ => counts.trainable,
    };
    let weights = (counts.total - adapter) * elem as u64 + adapter * 4;
    // Every tensor of the files is read before any is converted (f32 files assumed, as
    // T5 checkpoints are published); converted copies sit beside them.
    let stored = (counts.total - adapter) * 4;
    let loading = match elem < 4.0 {
        true => stored + weights,
        false => stored.max(weights),
    };
    let (param_elem, largest) = trained_tensors(
        method.kind,
        elem as u64,
        || cfg.weight_shapes(),
        || crate::peft::freeze::trainable_weight_names_t5(cfg, method),
    )?;
    Ok(MemoryEstimate {
        weights,
        optimizer: state_bytes(counts.trainable, param_elem),
        step: step_bytes(largest, step.path() == Path::Fused),
        activations: (activations + mixed) as u64,
        loss_head: loss_head as u64,
        loading,
        process: PROCESS_BYTES,
        gpu_runtime: if step.cpu {
            0
        } else {
            super::GPU_RUNTIME_BYTES
        },
    })
}

/// What the method's own operations keep: LoRA's x·A, (x·A)·B, its scaling and the sum per
/// target (DoRA two more of the output); IA³ its scaled tensor. Encoder projections and the
/// cross-attention's keys and values read the sources' rows, the others the targets'.
/// `targets` and `feedforward` index `projections`, as `MethodConfig::t5_targets` gives them.
fn adapters(
    method: &MethodConfig,
    projections: &[(String, usize, usize)],
    targets: &[usize],
    feedforward: &[usize],
    ne: f64,
    nd: f64,
) -> f64 {
    targets
        .iter()
        .map(|&i| {
            let (name, fan_in, fan_out) = &projections[i];
            let rows = match name.starts_with("encoder.")
                || name.ends_with("EncDecAttention.k")
                || name.ends_with("EncDecAttention.v")
            {
                true => ne,
                false => nd,
            };
            let (fi, fo) = (*fan_in as f64, *fan_out as f64);
            rows * match method.kind {
                MethodKind::Lora => {
                    method.r as f64 + 3.0 * fo + if method.use_dora { 2.0 * fo } else { 0.0 }
                }
                _ if feedforward.contains(&i) => fi,
                _ => fo,
            }
        })
        .sum()
}
