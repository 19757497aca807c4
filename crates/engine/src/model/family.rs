//! What each supported architecture is made of: one row per `architectures[0]`, read by the
//! one decoder in `llama.rs`. Sources, per family, in transformers 5:
//! `models/llama/modeling_llama.py`, `models/mistral/modeling_mistral.py` (a sliding window on
//! every layer), `models/qwen2/modeling_qwen2.py` (q/k/v bias), `models/qwen3/modeling_qwen3.py`
//! (RMSNorm of each query and key head before the rotary embedding) and
//! `models/gemma3/modeling_gemma3.py` (norms as `x̂ · (1 + w)`, four norms per layer, q/k
//! norms, GeGLU with tanh-GELU, embeddings × √hidden, `query_pre_attn_scalar`, sliding-window
//! layers with their own rotary base) and `models/gemma2/modeling_gemma2.py` (Gemma 3's parts
//! without q/k norms or a second rotary base, with tanh soft-capping of attention scores and
//! final logits) and `models/phi3/modeling_phi3.py` (one `qkv_proj` and one `gate_up_proj`,
//! rotary embedding on a part of each head, LongRoPE). docs/FAMILIES.md has the table.

use serde::{Deserialize, Serialize};

/// The MLP's gate activation: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// SwiGLU (`silu`).
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// The activation a config's `hidden_act` / `hidden_activation` names, if supported.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Self::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Some(Self::GeluTanh),
            _ => None,
        }
    }
}

/// Whether a layer attends to every earlier position or to a window of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Every earlier position (`full_attention`).
    Full,
    /// The last `sliding_window` positions, its own included (`sliding_attention`).
    Sliding,
}

/// Which layers attend through a sliding window when the config has one and lists no
/// `layer_types` (transformers' defaults per family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingLayers {
    /// None (Llama).
    None,
    /// Every layer (Mistral, Phi-3).
    All,
    /// Layers 0, 2, 4, … (Gemma 2).
    EveryOther,
    /// All but every `sliding_window_pattern`-th (6 by default; Gemma 3).
    AllButEveryNth,
    /// Layers from `max_window_layers` on, with `use_sliding_window` only (Qwen).
    FromMaxWindowLayers,
}

/// The parts one architecture uses, besides its sizes, and the values its config.json may
/// leave out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    /// Its name for people, as the model library shows it.
    pub label: &'static str,
    /// The `model_type` transformers writes for it.
    pub model_type: &'static str,
    /// Added to every norm weight when it is applied: Gemma stores `w` and scales by `1 + w`.
    pub norm_offset: f64,
    /// An RMSNorm over each query and key head (`self_attn.q_norm`, `self_attn.k_norm`).
    pub qk_norm: bool,
    /// Gemma 2/3's four norms per layer: the attention's and the MLP's outputs are normed
    /// before the residual add (`post_attention_layernorm`, `post_feedforward_layernorm`) and
    /// the MLP's input has its own (`pre_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// Embeddings are multiplied by √hidden (in the compute dtype).
    pub scaled_embeddings: bool,
    /// q/k/v projections carry a bias unless `attention_bias` says otherwise.
    pub qkv_bias: bool,
    /// One `qkv_proj` and one `gate_up_proj` instead of q/k/v and gate/up (Phi-3).
    pub fused_projections: bool,
    /// The activation when the config names none.
    pub activation: Activation,
    /// `tie_word_embeddings` when the config leaves it out.
    pub tied_embeddings: bool,
    /// Scores scaled by `query_pre_attn_scalar^-½` where the config gives it (Gemma).
    pub query_pre_attn_scalar: bool,
    /// `rope_theta` when the config leaves it out.
    pub rope_theta: f64,
    /// The rotary base of sliding layers when the config leaves it out (Gemma 3's local
    /// base); `None`: they share the full layers'.
    pub local_rope_theta: Option<f64>,
    /// Which layers slide.
    pub sliding_layers: SlidingLayers,
    /// `sliding_window` when the field is missing (not `null`).
    pub sliding_window: Option<usize>,
    /// `(attn_logit_softcapping, final_logit_softcapping)` when the fields are missing (not
    /// `null`): Gemma 2's 50 and 30.
    pub softcaps: Option<(f64, f64)>,
}

const LLAMA: Family = Family {
    label: "Llama",
    model_type: "llama",
    norm_offset: 0.0,
    qk_norm: false,
    sandwich_norms: false,
    scaled_embeddings: false,
    qkv_bias: false,
    fused_projections: false,
    activation: Activation::Silu,
    tied_embeddings: false,
    query_pre_attn_scalar: false,
    rope_theta: 10_000.0,
    local_rope_theta: None,
    sliding_layers: SlidingLayers::None,
    sliding_window: None,
    softcaps: None,
};

/// Gemma 2 and 3's common parts.
const GEMMA: Family = Family {
    label: "Gemma",
    model_type: "gemma",
    norm_offset: 1.0,
    qk_norm: false,
    sandwich_norms: true,
    scaled_embeddings: true,
    qkv_bias: false,
    fused_projections: false,
    activation: Activation::GeluTanh,
    tied_embeddings: true,
    query_pre_attn_scalar: true,
    sliding_window: Some(4096),
    ..LLAMA
};

/// Every supported `architectures[0]` with its parts.
pub const FAMILIES: &[(&str, Family)] = &[
    ("LlamaForCausalLM", LLAMA),
    (
        "MistralForCausalLM",
        Family {
            label: "Mistral",
            model_type: "mistral",
            sliding_layers: SlidingLayers::All,
            sliding_window: Some(4096),
            ..LLAMA
        },
    ),
    (
        "Qwen2ForCausalLM",
        Family {
            label: "Qwen2",
            model_type: "qwen2",
            qkv_bias: true,
            sliding_layers: SlidingLayers::FromMaxWindowLayers,
            ..LLAMA
        },
    ),
    (
        "Qwen3ForCausalLM",
        Family {
            label: "Qwen3",
            model_type: "qwen3",
            qk_norm: true,
            sliding_layers: SlidingLayers::FromMaxWindowLayers,
            ..LLAMA
        },
    ),
    (
        "Gemma2ForCausalLM",
        Family {
            label: "Gemma 2",
            model_type: "gemma2",
            sliding_layers: SlidingLayers::EveryOther,
            softcaps: Some((50.0, 30.0)),
            ..GEMMA
        },
    ),
    (
        "Gemma3ForCausalLM",
        Family {
            label: "Gemma 3",
            model_type: "gemma3_text",
            qk_norm: true,
            rope_theta: 1e6,
            local_rope_theta: Some(10_000.0),
            sliding_layers: SlidingLayers::AllButEveryNth,
            ..GEMMA
        },
    ),
    (
        "Phi3ForCausalLM",
        Family {
            label: "Phi-3",
            model_type: "phi3",
            fused_projections: true,
            sliding_layers: SlidingLayers::All,
            ..LLAMA
        },
    ),
];

/// The parts of `architecture`, if it is supported.
pub fn family(architecture: &str) -> Option<Family> {
    FAMILIES
        .iter()
        .find(|(a, _)| *a == architecture)
        .map(|(_, f)| *f)
}

/// The family name people know `architecture` by (`Gemma 3`; `Gemma 3 (vision)` for a
/// multimodal checkpoint, whose text decoder the studio trains), or the architecture itself.
pub fn label(architecture: &str) -> String {
    if let Some(text) = super::multimodal::text_architecture(architecture) {
        return format!("{} (vision)", label(text));
    }
    family(architecture).map_or_else(|| architecture.to_string(), |f| f.label.to_string())
}

/// The supported architectures, for error messages.
pub fn supported() -> String {
    FAMILIES
        .iter()
        .map(|(a, _)| *a)
        .chain(super::multimodal::architectures())
        .collect::<Vec<_>>()
        .join(", ")
}
