//! Frozen base weights kept quantized in memory: llama.cpp's block formats as a GGUF file
//! stores them, or made at load time from a safetensors base (docs/QUANTIZED.md). A weight is never
//! widened whole on the CPU: the fused products widen a tile of rows at a time
//! (`fused::linear::Weight::Quantized`); elsewhere one layer's weight is dequantized just
//! before use and dropped after it (`BaseWeight::dense`).

mod ggml;
pub mod nf4;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// A quantization a safetensors base can be given at load time (`quantize` in the run
/// config, `--quantize` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// 4.5 bits per weight: blocks of 32 with one f16 scale.
    Q4_0,
    /// 5 bits per weight: blocks of 32 with an f16 scale and minimum.
    Q4_1,
    /// 5.5 bits per weight.
    Q5_0,
    /// 6 bits per weight.
    Q5_1,
    /// 8.5 bits per weight: blocks of 32 with one f16 scale (nearly lossless).
    Q8_0,
    /// llama.cpp's k-quants: super-blocks of 256 with quantized sub-block scales.
    Q2K,
    /// 3.4 bits per weight.
    Q3K,
    /// 4.5 bits per weight: the usual choice for a 4-bit base.
    Q4K,
    /// 5.5 bits per weight.
    Q5K,
    /// 6.6 bits per weight.
    Q6K,
    /// QLoRA's 4-bit NormalFloat (bitsandbytes' NF4: blocks of 64, f32 maxima): 4.5 bits.
    Nf4,
}

/// Every [`Quantization`], in the order forms and messages list them.
pub const QUANTIZATIONS: [Quantization; 11] = [
    Quantization::Q4K,
    Quantization::Nf4,
    Quantization::Q8_0,
    Quantization::Q4_0,
    Quantization::Q4_1,
    Quantization::Q5_0,
    Quantization::Q5_1,
    Quantization::Q2K,
    Quantization::Q3K,
    Quantization::Q5K,
    Quantization::Q6K,
];

impl Quantization {
    /// The name the config, the command line and GGUF tools use (`q4_k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q2K => "q2_k",
            Self::Q3K => "q3_k",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
            Self::Nf4 => "nf4",
        }
    }

    /// Bits a weight takes (its block's bytes over its weights).
    pub fn bits_per_weight(self) -> f64 {
        let f = self.format();
        8.0 * f.bytes(f.block_size() as u64) as f64 / f.block_size() as f64
    }

    /// The block format the weights are held in.
    pub fn format(self) -> Format {
        Format::Ggml(match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q2K => GgmlDType::Q2K,
            Self::Q3K => GgmlDType::Q3K,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
            Self::Nf4 => return Format::Nf4,
        })
    }
}

/// A block format a frozen weight is held in: one of llama.cpp's, or NF4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// llama.cpp's block formats (and F16/BF16), as a GGUF file stores them.
    Ggml(GgmlDType),
    /// QLoRA's NF4.
    Nf4,
}

impl Format {
    /// Weights per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::Ggml(f) => f.block_size(),
            Self::Nf4 => nf4::BLOCK,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::Ggml(f) => f.type_size(),
            // Two codes a byte and the block's f32 maximum.
            Self::Nf4 => nf4::BLOCK / 2 + 4,
        }
    }

    /// Bytes of `count` weights (a whole number of blocks), saturating (a hostile GGUF
    /// header may claim any count).
    pub fn bytes(self, count: u64) -> u64 {
        (count / self.block_size().max(1) as u64).saturating_mul(self.type_size() as u64)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ggml(g) => f.write_str(&ggml_name(*g)),
            Self::Nf4 => f.write_str("NF4"),
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quantization {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace("_k_m", "_k");
        QUANTIZATIONS
            .into_iter()
            .find(|q| q.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = QUANTIZATIONS.iter().map(|q| q.name()).collect();
                EngineError::config(
                    "quantize",
                    format!("`{s}` is not one of {}", names.join(", ")),
                )
            })
    }
}

/// The name llama.cpp gives a block format (`Q4_K`), for messages and model cards.
pub fn ggml_name(dtype: GgmlDType) -> String {
    let name = format!("{dtype:?}").to_uppercase();
    match name.strip_suffix('K') {
        Some(stem) if stem.starts_with('Q') && !stem.ends_with('_') => format!("{stem}_K"),
        _ => name,
    }
}

/// Where a quantized weight's bytes are.
enum Blocks {
    /// llama.cpp's formats, in candle's `QTensor` (its dequantize kernels on every device).
    Ggml(QTensor),
    /// NF4: packed codes [rows · cols / 2] (u8) and per-block maxima (f32), on the device.
    Nf4 { codes: Tensor, absmax: Tensor },
}

/// A frozen weight [rows, cols] held in a block format; products read it through
/// [`Self::rows_to_f32`] (the CPU) or [`Self::dequantize`] (any device).
pub struct QuantizedWeight {
    blocks: Blocks,
    rows: usize,
    cols: usize,
    /// The model's dtype: what a dequantized weight is given as, and what the CPU's tiles
    /// are rounded to, so that products see the numbers a dequantized copy would hold.
    dtype: DType,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedWeight({} [{}, {}])",
            self.format(),
            self.rows,
            self.cols
        )
    }
}

impl QuantizedWeight {
    /// Quantizes a dense [rows, cols] weight into `format`, kept on `device`; products give
    /// `dtype` results.
    pub fn quantize(
        weight: &Tensor,
        format: Format,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (rows, cols) = weight.dims2()?;
        if !cols.is_multiple_of(format.block_size()) {
            return Err(EngineError::config(
                "quantize",
                format!(
                    "{format} needs rows whose width divides into blocks of {}; a weight is {cols} wide",
                    format.block_size()
                ),
            ));
        }
        let cpu = weight.to_device(&Device::Cpu)?;
        let blocks = match (format, device) {
            (Format::Ggml(f), Device::Cpu) => Blocks::Ggml(QTensor::quantize(&cpu, f)?),
            (Format::Ggml(f), d) => Blocks::Ggml(QTensor::quantize_onto(&cpu, f, d)?),
            (Format::Nf4, d) => {
                let values = cpu.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let (codes, absmax) = nf4::on_device(&values, d)?;
                Blocks::Nf4 { codes, absmax }
            }
        };
        Ok(Self {
            blocks,
            rows,
            cols,
            dtype,
        })
    }

    /// Wraps blocks as read from a GGUF file ([rows, cols] in transformers' order).
    pub fn from_blocks(blocks: QTensor, dtype: DType) -> Result<Self> {
        let (rows, cols) = blocks.shape().dims2()?;
        Ok(Self {
            blocks: Blocks::Ggml(blocks),
            rows,
            cols,
            dtype,
        })
    }

    /// [out_features, in_features].
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The block format.
    pub fn format(&self) -> Format {
        match &self.blocks {
            Blocks::Ggml(q) => Format::Ggml(q.dtype()),
            Blocks::Nf4 { .. } => Format::Nf4,
        }
    }

    /// The device the blocks are on.
    pub fn device(&self) -> Device {
        match &self.blocks {
            Blocks::Ggml(q) => q.device(),
            Blocks::Nf4 { codes, .. } => codes.device().clone(),
        }
    }

    /// The dtype products give.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The whole weight widened to the model's dtype on `device` (one layer at a time: the
    /// caller drops it after use).
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let on_device = match &self.blocks {
            Blocks::Ggml(q) => q.dequantize(&q.device())?,
            Blocks::Nf4 { codes, absmax } => nf4::dequantize(codes, absmax, self.dims())?,
        };
        Ok(on_device.to_dtype(self.dtype)?.to_device(device)?)
    }

    /// Rows `ids` [n] (u32) widened to the model's dtype, as [n, cols]: an embedding lookup.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.blocks {
            Blocks::Ggml(q) => Ok(q.embedding(ids)?.to_dtype(self.dtype)?),
            // Never an embedding today (`quantize` covers projections only): widened whole.
            Blocks::Nf4 { .. } => Ok(self.dequantize(&self.device())?.index_select(ids, 0)?),
        }
    }

    /// The blocks as stored and their type, for kernels that read them in place (a weight
    /// in llama.cpp's formats; on the CPU, borrowed).
    pub fn ggml_bytes(&self) -> Option<(GgmlDType, std::borrow::Cow<'_, [u8]>)> {
        match &self.blocks {
            Blocks::Ggml(q) => Some((q.dtype(), q.data().ok()?)),
            Blocks::Nf4 { .. } => None,
        }
    }

    /// Rows `r0..r0 + out.len() / cols` widened to f32 into `out` (a CPU weight), not rounded
    /// to the model's dtype: for callers that round them themselves.
    pub fn widen_rows(&self, r0: usize, out: &mut [f32]) -> candle_core::Result<()> {
        use candle_core::{CpuStorage, Storage};
        match &self.blocks {
            Blocks::Ggml(q) => ggml::rows_to_f32(q.dtype(), &q.data()?, self.cols, r0, out),
            Blocks::Nf4 { codes, absmax } => {
                let (c, cl) = codes.storage_and_layout();
                let (a, al) = absmax.storage_and_layout();
                match (&*c, &*a) {
                    (Storage::Cpu(CpuStorage::U8(c)), Storage::Cpu(CpuStorage::F32(a))) => {
                        let (c, a) = (&c[cl.start_offset()..], &a[al.start_offset()..]);
                        nf4::rows_to_f32(c, a, self.cols, r0, out)
                    }
                    _ => candle_core::bail!("NF4 weight: not on the CPU"),
                }
            }
        }
    }

    /// Rows `r0..r0 + out.len() / cols` widened to f32 into `out` (a CPU weight), rounded to
    /// the model's dtype.
    pub fn rows_to_f32(&self, r0: usize, out: &mut [f32]) -> candle_core::Result<()> {
        self.widen_rows(r0, out)?;
        if self.dtype == DType::BF16 {
            out.iter_mut()
                .for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
        }
        Ok(())
    }

    /// NF4's packed codes and per-block maxima as held (to compare with bitsandbytes').
    pub fn nf4_parts(&self) -> Option<(Vec<u8>, Vec<f32>)> {
        match &self.blocks {
            Blocks::Nf4 { codes, absmax } => Some((codes.to_vec1().ok()?, absmax.to_vec1().ok()?)),
            Blocks::Ggml(_) => None,
        }
    }
}

/// The block formats a quantized base holds its weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseFormats {
    /// The decoder's projections (the most common type, for a GGUF file that mixes them).
    pub projections: Format,
    /// The token embeddings, when they are quantized (a GGUF base).
    pub embeddings: Option<Format>,
    /// An untied LM head, when it is quantized (a GGUF base).
    pub head: Option<Format>,
}

impl BaseFormats {
    /// A safetensors base quantized at load time: projections only, as QLoRA does.
    pub fn projections(quantize: Quantization) -> Self {
        Self {
            projections: quantize.format(),
            embeddings: None,
            head: None,
        }
    }
}

/// The format that occurs most often (of a tie, the later), if any.
pub fn most_common(formats: impl Iterator<Item = Format>) -> Option<Format> {
    let mut counts: Vec<(Format, usize)> = Vec::new();
    for f in formats {
        match counts.iter_mut().find(|(g, _)| *g == f) {
            Some((_, n)) => *n += 1,
            None => counts.push((f, 1)),
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(f, _)| f)
}

/// Whether a base quantization covers the weight `name` of shape `dims`: the decoder
/// layers' projections. Embeddings, norms and the LM head stay in the model's dtype, as
/// QLoRA keeps them.
pub fn covers(name: &str, dims: &[usize]) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight") && dims.len() == 2
}

/// The block format a weight `cols` wide gets when `wanted` is asked for: `wanted`, or where
/// its rows do not divide into `wanted`'s blocks the type llama.cpp's quantizer falls back to
/// (docs/QUANTIZED.md §3; IQ4_NL, its choice for Q2_K and Q3_K, is not one candle stores, so
/// Q4_0), or `None` when no block fits (NF4 has no fallback: its blocks must not straddle
/// rows here).
pub fn format_for(wanted: Format, cols: usize) -> Option<Format> {
    let fits = |f: Format| cols.is_multiple_of(f.block_size());
    if fits(wanted) {
        return Some(wanted);
    }
    let fallback = match wanted {
        Format::Ggml(GgmlDType::Q2K | GgmlDType::Q3K) => GgmlDType::Q4_0,
        Format::Ggml(GgmlDType::Q4K) => GgmlDType::Q5_0,
        Format::Ggml(GgmlDType::Q5K) => GgmlDType::Q5_1,
        Format::Ggml(GgmlDType::Q6K) => GgmlDType::Q8_0,
        _ => return None,
    };
    Some(Format::Ggml(fallback)).filter(|&f| fits(f))
}

/// `blocks` [rows, cols] with its rows reordered: row `r` of the result is row `order[r]`.
/// Blocks never straddle rows, so this moves whole rows of bytes.
pub fn reorder_rows(blocks: &QTensor, order: &[usize]) -> Result<QTensor> {
    let (rows, _) = blocks.shape().dims2()?;
    let bytes = blocks.data()?;
    if order.len() != rows || !bytes.len().is_multiple_of(rows.max(1)) {
        return Err(EngineError::config(
            "quantize",
            format!(
                "a reordering of {} rows for a weight of {rows}",
                order.len()
            ),
        ));
    }
    let per_row = bytes.len() / rows.max(1);
    let mut out = Vec::with_capacity(bytes.len());
    for &r in order {
        let row = bytes.get(r * per_row..(r + 1) * per_row).ok_or_else(|| {
            EngineError::config("quantize", format!("row {r} of a weight of {rows}"))
        })?;
        out.extend_from_slice(row);
    }
    let storage = candle_core::quantized::QStorage::from_data(
        std::borrow::Cow::Owned(out),
        &blocks.device(),
        blocks.dtype(),
    )?;
    Ok(QTensor::new(storage, blocks.shape().clone())?)
}

/// Blocks read on the CPU, moved to `device`.
pub fn onto(blocks: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(blocks);
    }
    let storage =
        candle_core::quantized::QStorage::from_data(blocks.data()?, device, blocks.dtype())?;
    Ok(QTensor::new(storage, blocks.shape().clone())?)
}
