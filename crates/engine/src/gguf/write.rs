//! Writing a GGUF file (version 3, alignment 32) atomically, as llama.cpp's converters do.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use crate::error::Result;
use crate::fsutil::write_atomic;

/// A tensor converted to GGUF data of type `dtype`.
pub fn gguf_tensor(t: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    Ok(QTensor::quantize(
        &t.to_dtype(candle_core::DType::F32)?.contiguous()?,
        dtype,
    )?)
}

/// GGUF's type codes for an array and a string.
const ARRAY: u32 = 9;
const STRING: u32 = 8;

/// Writes `metadata` and `tensors` (in the order given) to the GGUF file `out`.
pub fn write_gguf(
    out: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensors)?;
    let mut bytes = bytes.into_inner();
    // candle writes version 2; versions 2 and 3 lay out little-endian files identically, and
    // 3 is what llama.cpp's converters write.
    bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
    // candle types an empty array's elements U32; llama.cpp requires a string array (an
    // empty `tokenizer.ggml.merges`, a byte-level vocabulary without merges) to be typed
    // STRING whatever its length.
    for (key, value) in &metadata {
        if matches!(value, Value::Array(v) if v.is_empty()) {
            let mut entry = (key.len() as u64).to_le_bytes().to_vec();
            entry.extend(key.as_bytes());
            entry.extend(ARRAY.to_le_bytes());
            let header = bytes.len().min(1 << 26);
            if let Some(at) = bytes[..header]
                .windows(entry.len())
                .position(|w| w == entry.as_slice())
            {
                let ty = at + entry.len();
                bytes[ty..ty + 4].copy_from_slice(&STRING.to_le_bytes());
            }
        }
    }
    write_atomic(out, &bytes)
}
