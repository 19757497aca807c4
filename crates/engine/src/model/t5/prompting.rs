//! Prompt and prefix tuning on T5, in PEFT's layout for encoder-decoder models
//! (`PeftModelForSeq2SeqLM.forward` and `PeftModel.get_prompt`, docs/FORMATS.md §4, "On an
//! encoder-decoder model"):
//! - prompt tuning: PEFT's table holds 2·tokens rows (`num_transformer_submodules` is 2 for
//!   `SEQ_2_SEQ_LM`); the first `tokens` go before the encoder's input embeddings, their
//!   positions unmasked, so the decoder's cross-attention sees them too. The other rows are
//!   saved and never read.
//! - prefix tuning: the prefix [tokens, layers·2·d_model] is viewed as [tokens, 2L, heads,
//!   d_kv], repeated once along the 2L axis and cut in groups of four rows per decoder block
//!   (self keys, self values, cross keys, cross values); PEFT then empties the cross part, so
//!   only the decoder's self-attention sees a prefix, and block i reads rows 4i mod 2L and
//!   4i mod 2L + 1 (with two layers both blocks read layer 0's). The encoder sees nothing;
//!   the decoder's queries count their positions after the prefix.

use candle_core::Tensor;

use super::{T5Config, T5Model};
use crate::error::{EngineError, Result};

impl T5Config {
    /// The width of a prefix row, layers·2·d_model, after checking that PEFT's layout fits
    /// this model: PEFT sizes the prefix by the encoder's depth and splits `d_model` into the
    /// heads, so the decoder must be as deep and `d_model` must equal heads·d_kv.
    pub fn prefix_width(&self) -> Result<usize> {
        if self.num_decoder_layers != self.num_layers {
            return Err(EngineError::config(
                "kind",
                format!(
                    "prefix tuning on T5 needs a decoder as deep as the encoder (PEFT sizes the prefix by the encoder's {} layers; this decoder has {})",
                    self.num_layers, self.num_decoder_layers
                ),
            ));
        }
        if self.inner_dim() != self.d_model {
            return Err(EngineError::config(
                "kind",
                format!(
                    "prefix tuning on T5 needs d_model ({}) equal to num_heads·d_kv ({}), as PEFT splits d_model into the heads",
                    self.d_model,
                    self.inner_dim()
                ),
            ));
        }
        Ok(self.num_layers * 2 * self.d_model)
    }
}

/// The rows of PEFT's prompt-tuning table for `tokens` virtual tokens on an encoder-decoder
/// model: two per token, the second half unused.
pub fn prompt_rows(tokens: usize) -> usize {
    2 * tokens
}

impl T5Model {
    /// Sets (or clears) prompt tuning's table [rows, d_model], of which the first `tokens`
    /// rows go before every source.
    pub fn set_prompt(&mut self, table: Option<Tensor>, tokens: usize) {
        self.prompt = table.map(|t| (t, tokens));
    }

    /// Sets (or clears) prefix tuning's keys and values [tokens, layers·2·d_model].
    pub fn set_prefix(&mut self, prefix: Option<Tensor>) {
        self.prefix = prefix;
    }

    /// Embedded sources `x` [b, s, d] and their padding mask [b, s] with the prompt's
    /// virtual tokens put first (as is, without prompt tuning).
    pub(super) fn with_prompt(&self, x: Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some((table, tokens)) = &self.prompt else {
            return Ok((x, mask.clone()));
        };
        let (b, _, d) = x.dims3()?;
        let prompt = table
            .narrow(0, 0, *tokens)?
            .to_dtype(x.dtype())?
            .unsqueeze(0)?
            .broadcast_as((b, *tokens, d))?;
        let ones = Tensor::ones((b, *tokens), mask.dtype(), mask.device())?;
        Ok((
            Tensor::cat(&[&prompt, &x], 1)?,
            Tensor::cat(&[&ones, mask], 1)?,
        ))
    }

    /// Each decoder block's prefix keys and values [b, heads, tokens, d_kv] in PEFT's
    /// layout, or `None` without prefix tuning.
    pub(super) fn prefix_kv(&self, batch: usize) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        let Some(prefix) = &self.prefix else {
            return Ok(None);
        };
        let cfg = &self.cfg;
        let (tokens, heads, d) = (prefix.dim(0)?, cfg.num_heads, cfg.d_kv);
        let rows = 2 * cfg.num_layers;
        let viewed = prefix.reshape((tokens, rows, heads, d))?;
        let row = |r: usize| -> Result<Tensor> {
            Ok(viewed
                .narrow(1, r, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .broadcast_as((batch, heads, tokens, d))?
                .contiguous()?)
        };
        (0..self.decoder.blocks.len())
            .map(|i| {
                let k = (4 * i) % rows;
                Ok((row(k)?, row(k + 1)?))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The number of prefix positions the decoder's queries come after.
    pub(super) fn prefix_len(&self) -> Result<usize> {
        Ok(match &self.prefix {
            Some(p) => p.dim(0)?,
            None => 0,
        })
    }
}
