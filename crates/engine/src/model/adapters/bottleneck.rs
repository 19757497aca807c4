//! Bottleneck adapters as the adapters library computes them for Llama (docs/FORMATS.md §5):
//! a down projection to `hidden / reduction_factor`, a non-linearity, an up projection, added
//! to the residual stream after a sublayer. With `h` the sublayer's output and `r` its input:
//! - Houlsby (`double_seq_bn`, after attention and after the MLP, swish):
//!   `out = h + r + U(f(D(h)))`
//! - Pfeiffer (`seq_bn`, after the MLP only, relu): `out = h + r + U(f(D(h + r)))`
//!
//! Weights start as the library's "bert" init: N(0, 0.02), biases zero.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;
use crate::ops::{linear_matmul, SplitMix64};

/// Where an adapter sits in a decoder layer, as the library names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// After self-attention (`attention_adapters`).
    Attention,
    /// After the MLP (`output_adapters`).
    Output,
}

impl Site {
    /// The library's module name.
    pub fn module(self) -> &'static str {
        match self {
            Self::Attention => "attention_adapters",
            Self::Output => "output_adapters",
        }
    }
}

/// The trained tensors of one adapter, under the library's names (without the adapter name).
pub const PARTS: [&str; 4] = [
    "adapter_down.0.weight",
    "adapter_down.0.bias",
    "adapter_up.weight",
    "adapter_up.bias",
];

/// One bottleneck adapter.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    down_w: Tensor,
    down_b: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    /// Swish (Houlsby) rather than relu (Pfeiffer).
    swish: bool,
    /// The adapter reads `h + r` (Pfeiffer) rather than `h` (Houlsby).
    reads_residual: bool,
}

impl Bottleneck {
    /// A new adapter for `hidden` and a bottleneck of `width`, with its variables in
    /// [`PARTS`] order.
    pub fn init(
        hidden: usize,
        width: usize,
        houlsby: bool,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Vec<Var>)> {
        let mut rng = SplitMix64::new(seed);
        let mut normal =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (0.02 * rng.next_normal()) as f32).collect() };
        let var = |v: Vec<f32>, shape: &[usize]| -> Result<Var> {
            Ok(Var::from_tensor(
                &Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?,
            )?)
        };
        let vars = vec![
            var(normal(width * hidden), &[width, hidden])?,
            var(vec![0.0; width], &[width])?,
            var(normal(hidden * width), &[hidden, width])?,
            var(vec![0.0; hidden], &[hidden])?,
        ];
        Ok((Self::from_vars(&vars, houlsby), vars))
    }

    /// An adapter over existing variables in [`PARTS`] order (loaded or resumed).
    pub fn from_vars(vars: &[Var], houlsby: bool) -> Self {
        let t = |i: usize| vars[i].as_tensor().clone();
        Self {
            down_w: t(0),
            down_b: t(1),
            up_w: t(2),
            up_b: t(3),
            swish: houlsby,
            reads_residual: !houlsby,
        }
    }

    /// The adapter's tensors in [`PARTS`] order.
    pub fn tensors(&self) -> [&Tensor; 4] {
        [&self.down_w, &self.down_b, &self.up_w, &self.up_b]
    }

    /// Houlsby's adapter (swish, reading the sublayer's output) rather than Pfeiffer's.
    pub fn is_houlsby(&self) -> bool {
        self.swish
    }

    /// The residual stream after a sublayer whose output is `h` and input `r`.
    pub fn apply(&self, h: &Tensor, r: &Tensor) -> Result<Tensor> {
        let stream = (h + r)?;
        let input = if self.reads_residual { &stream } else { h };
        let down = linear_matmul(input, &self.down_w)?.broadcast_add(&self.down_b)?;
        let act = if self.swish {
            down.silu()?
        } else {
            down.relu()?
        };
        let up = linear_matmul(&act, &self.up_w)?.broadcast_add(&self.up_b)?;
        Ok((stream + up)?)
    }
}

/// A decoder layer's adapters.
#[derive(Debug, Clone, Default)]
pub struct LayerAdapters {
    /// After self-attention (Houlsby only).
    pub attention: Option<Bottleneck>,
    /// After the MLP.
    pub output: Option<Bottleneck>,
}

impl LayerAdapters {
    /// The adapter at `site`.
    pub fn at(&self, site: Site) -> Option<&Bottleneck> {
        match site {
            Site::Attention => self.attention.as_ref(),
            Site::Output => self.output.as_ref(),
        }
    }

    /// Places an adapter at `site`.
    pub fn set(&mut self, site: Site, adapter: Bottleneck) {
        match site {
            Site::Attention => self.attention = Some(adapter),
            Site::Output => self.output = Some(adapter),
        }
    }
}

/// The studio's name of an adapter tensor: `model.layers.{l}.{site module}.{part}`.
pub fn tensor_name(layer: usize, site: Site, part: &str) -> String {
    format!("model.layers.{layer}.{}.{part}", site.module())
}

/// The sites a method uses: Houlsby both, Pfeiffer the output only.
pub fn sites(houlsby: bool) -> &'static [Site] {
    if houlsby {
        &[Site::Attention, Site::Output]
    } else {
        &[Site::Output]
    }
}

/// The bottleneck width: `hidden / reduction_factor` (at least 1), as the library rounds it.
pub fn width(hidden: usize, reduction_factor: usize) -> usize {
    (hidden / reduction_factor.max(1)).max(1)
}
