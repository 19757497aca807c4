//! Rotary position embeddings in transformers' "rotate half" layout, with Llama 3, linear,
//! LongRoPE and YaRN scaling, over all of a head or its leading `rotary_dim` dimensions.

use candle_core::{DType, Device, Tensor, D};

use super::config::{LlamaConfig, Yarn};
use crate::error::Result;

/// Inverse frequencies of the rotary embedding, one per pair of head dimensions.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    /// LongRoPE's frequencies past the pretraining context, and that context.
    long: Option<(Vec<f64>, usize)>,
    /// The factor on cos and sin (LongRoPE's and YaRN's attention factor; 1 otherwise).
    scale: f64,
}

impl Rope {
    /// The full-attention layers' frequencies: from `rope_theta`, adjusted by Llama 3
    /// `rope_scaling` (transformers `_compute_llama3_parameters`), linear scaling
    /// (`_compute_linear_scaling_rope_parameters`), LongRoPE or YaRN when present.
    pub fn new(cfg: &LlamaConfig) -> Self {
        let mut rope = Self::plain(cfg.rotary_dim, cfg.rope_theta);
        if let Some(y) = &cfg.yarn {
            rope.inv_freq = yarn_frequencies(y, cfg.rotary_dim, cfg.rope_theta);
            rope.scale = y.attention_factor;
        }
        if let Some(l) = &cfg.longrope {
            let divided = |factors: &[f64]| -> Vec<f64> {
                rope.inv_freq
                    .iter()
                    .zip(factors)
                    .map(|(f, d)| f / d)
                    .collect()
            };
            let long = divided(&l.long_factor);
            rope.inv_freq = divided(&l.short_factor);
            rope.long = Some((long, l.original_max_position_embeddings));
            rope.scale = l.attention_factor;
        }
        rope.inv_freq
            .iter_mut()
            .for_each(|f| *f /= cfg.rope_linear_factor);
        if let Some(s) = &cfg.rope_scaling {
            let old_ctx = s.original_max_position_embeddings as f64;
            let low_wavelen = old_ctx / s.low_freq_factor;
            let high_wavelen = old_ctx / s.high_freq_factor;
            for f in rope.inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                *f = if wavelen < high_wavelen {
                    *f
                } else if wavelen > low_wavelen {
                    *f / s.factor
                } else {
                    let smooth = (old_ctx / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * *f / s.factor + smooth * *f
                };
            }
        }
        rope
    }

    /// The sliding-window layers' frequencies, where they have their own base (Gemma 3).
    pub fn local(cfg: &LlamaConfig) -> Option<Self> {
        cfg.local_rope_theta
            .map(|theta| Self::plain(cfg.rotary_dim, theta))
    }

    fn plain(head_dim: usize, theta: f64) -> Self {
        let d = head_dim;
        Self {
            inv_freq: (0..d / 2)
                .map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64))
                .collect(),
            long: None,
            scale: 1.0,
        }
    }

    /// `(cos, sin)` tables [len, rotary_dim] for positions `start..start + len`. LongRoPE
    /// takes its long frequencies once the positions pass the pretraining context (as
    /// transformers' `longrope_frequency_update` does for the whole call).
    pub fn tables(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = self.rows(start, len);
        let width = cos.len() / len.max(1);
        let cos = Tensor::from_vec(cos, (len, width), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, width), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// [`Self::tables`]' elements in f32, row after row (the decoder's own kernels read them).
    pub fn rows(&self, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let inv_freq = match &self.long {
            Some((long, original)) if start + len > *original => long,
            _ => &self.inv_freq,
        };
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(len * half * 2);
        let mut sin = Vec::with_capacity(len * half * 2);
        for p in start..start + len {
            for _ in 0..2 {
                for f in inv_freq {
                    let angle = p as f64 * f;
                    cos.push((angle.cos() * self.scale) as f32);
                    sin.push((angle.sin() * self.scale) as f32);
                }
            }
        }
        (cos, sin)
    }
}

/// YaRN's frequencies (transformers `_compute_yarn_parameters`): dimension `i` of `dim`
/// blends its own frequency with it divided by `factor`, by a ramp that runs from the
/// dimension where the pretraining context makes `beta_fast` rotations to the one where it
/// makes `beta_slow`.
fn yarn_frequencies(y: &Yarn, dim: usize, base: f64) -> Vec<f64> {
    let d = dim as f64;
    let original = y.original_max_position_embeddings as f64;
    let correction_dim = |rotations: f64| {
        d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
    if low == high {
        high += 0.001;
    }
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / d);
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let kept = 1.0 - ramp;
            freq / y.factor * (1.0 - kept) + freq * kept
        })
        .collect()
}

/// Applies the rotation to `x` [batch, heads, seq, head_dim]: `x·cos + rotate_half(x)·sin`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}
