//! Examples, the seeded epoch order, and right-padded batches.

use candle_core::{Device, Tensor};

use super::config::Truncation;
use crate::error::{EngineError, Result};
use crate::ops::SplitMix64;

/// A tokenized example; `loss_mask[i]` says whether token i is scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// 1 where the token is a training target.
    pub loss_mask: Vec<u8>,
    /// The encoder's input of a sequence-to-sequence example (T5): `ids` are then the
    /// decoder's, starting with its start token. Empty for a decoder-only example.
    pub source: Vec<u32>,
}

/// One batch: inputs, next-token targets and their loss weights, all [batch, seq].
#[derive(Debug)]
pub struct Batch {
    /// Input ids (u32).
    pub input_ids: Tensor,
    /// Target ids (u32); padding holds 0.
    pub targets: Tensor,
    /// 1.0 where a target counts, 0.0 on prompt tokens and padding (f32).
    pub weights: Tensor,
    /// Number of real (non-padding) input tokens.
    pub tokens: usize,
    /// An encoder-decoder batch's source ids (u32) and their padding mask (f32, 1 = token),
    /// both [batch, source length]; `None` for a decoder-only batch.
    pub source: Option<(Tensor, Tensor)>,
}

/// A tokenized dataset cut to a maximum length, with its epoch order.
#[derive(Debug, Clone)]
pub struct Examples {
    examples: Vec<Example>,
    /// Examples dropped because nothing in them was left to train on.
    dropped: usize,
    /// Examples cut to the length limit.
    truncated: usize,
    batch_size: usize,
    seed: u64,
}

impl Examples {
    /// Truncates examples to `seq_len + 1` tokens (inputs plus one shifted target), cutting
    /// the end (`Right`) or the start (`Left`), and drops those with nothing to learn.
    /// Errors when none remain.
    pub fn new(
        examples: Vec<Example>,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        Self::with_truncation(examples, seq_len, batch_size, seed, Truncation::Right)
    }

    /// [`Examples::new`] with the side to cut chosen.
    pub fn with_truncation(
        examples: Vec<Example>,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
        side: Truncation,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(EngineError::config("batch_size", "must be at least 1"));
        }
        if seq_len < 1 {
            return Err(EngineError::config("seq_len", "must be at least 1"));
        }
        let given = examples.len();
        let mut truncated = 0;
        let examples: Vec<Example> = examples
            .into_iter()
            .map(|mut e| {
                let keep = seq_len + 1;
                if e.ids.len() > keep {
                    truncated += 1;
                    if side == Truncation::Left {
                        let cut = e.ids.len() - keep;
                        e.ids.drain(..cut);
                        e.loss_mask.drain(..cut);
                    }
                    e.ids.truncate(keep);
                    e.loss_mask.truncate(keep);
                }
                e
            })
            .filter(|e| e.ids.len() >= 2 && e.loss_mask[1..].contains(&1))
            .collect();
        if examples.is_empty() {
            return Err(EngineError::config(
                "dataset",
                "no example has a token to train on (all empty or fully masked)",
            ));
        }
        let dropped = given - examples.len();
        Ok(Self {
            examples,
            dropped,
            truncated,
            batch_size,
            seed,
        })
    }

    /// Examples dropped because no trained token was left after truncation to `seq_len`
    /// (a prompt longer than the limit, an empty text).
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Packs consecutive examples into rows of at most `seq_len + 1` tokens (first fit, file
    /// order), so short examples stop wasting padding. Packed examples share a row: later ones
    /// attend to earlier ones and positions run on (TRL's classic packing); each keeps its own
    /// loss mask and ends with its own EOS.
    pub fn packed(mut self, seq_len: usize) -> Self {
        let limit = seq_len + 1;
        let mut rows: Vec<Example> = Vec::new();
        for e in self.examples.drain(..) {
            match rows.last_mut() {
                Some(row) if row.ids.len() + e.ids.len() <= limit => {
                    row.ids.extend(e.ids);
                    row.loss_mask.extend(e.loss_mask);
                }
                _ => rows.push(e),
            }
        }
        self.examples = rows;
        self
    }

    /// The examples (rows, once packed) in stored order.
    pub fn iter(&self) -> impl Iterator<Item = &Example> {
        self.examples.iter()
    }

    /// Examples longer than `seq_len` that were cut.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples (never true after `new`).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Splits off the last `fraction` of a seeded shuffle as a validation set.
    pub fn split(self, fraction: f64) -> Result<(Self, Option<Self>)> {
        if fraction <= 0.0 {
            return Ok((self, None));
        }
        if fraction >= 1.0 {
            return Err(EngineError::config("val_fraction", "must be below 1"));
        }
        let order = permutation(self.examples.len(), SplitMix64::mix(self.seed, u64::MAX));
        let n_val = ((self.examples.len() as f64 * fraction).round() as usize).max(1);
        if n_val >= self.examples.len() {
            return Err(EngineError::config(
                "val_fraction",
                format!("leaves no training example out of {}", self.examples.len()),
            ));
        }
        let pick = |idx: &[usize]| {
            idx.iter()
                .map(|&i| self.examples[i].clone())
                .collect::<Vec<_>>()
        };
        let (train_idx, val_idx) = order.split_at(self.examples.len() - n_val);
        let part = |idx: &[usize], dropped: usize, truncated: usize| Self {
            examples: pick(idx),
            dropped,
            truncated,
            batch_size: self.batch_size,
            seed: self.seed,
        };
        let (train, val) = (
            part(train_idx, self.dropped, self.truncated),
            part(val_idx, 0, 0),
        );
        Ok((train, Some(val)))
    }

    /// Batches in one epoch (the last may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.examples.len().div_ceil(self.batch_size)
    }

    /// The `index`-th batch of the whole run (epochs follow one another, each in its own
    /// seeded order). Depends on nothing but `index`, which makes resume exact.
    pub fn batch_at(&self, index: usize, device: &Device) -> Result<Batch> {
        let members: Vec<&Example> = self
            .members_of(index)
            .into_iter()
            .map(|i| &self.examples[i])
            .collect();
        make_batch(&members, device)
    }

    /// The positions (in [`Examples::iter`] order) of the examples of the `index`-th batch of
    /// the whole run: what [`Examples::batch_at`] pads into a batch.
    pub fn members_of(&self, index: usize) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch();
        let (epoch, pos) = (index / per_epoch, index % per_epoch);
        let order = permutation(
            self.examples.len(),
            SplitMix64::mix(self.seed, epoch as u64),
        );
        let end = ((pos + 1) * self.batch_size).min(order.len());
        order[pos * self.batch_size..end].to_vec()
    }

    /// Batches of the set in file order, for evaluation.
    pub fn eval_batches(&self, device: &Device) -> Result<Vec<Batch>> {
        self.examples
            .chunks(self.batch_size)
            .map(|c| make_batch(&c.iter().collect::<Vec<_>>(), device))
            .collect()
    }

    /// The epoch a run-wide batch index falls in.
    pub fn epoch_of(&self, index: usize) -> usize {
        index / self.batches_per_epoch()
    }
}

/// A seeded Fisher–Yates permutation of `0..n`.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn make_batch(members: &[&Example], device: &Device) -> Result<Batch> {
    let seq = members.iter().map(|e| e.ids.len() - 1).max().unwrap_or(1);
    let b = members.len();
    let (mut inputs, mut targets, mut weights) = (
        vec![0u32; b * seq],
        vec![0u32; b * seq],
        vec![0f32; b * seq],
    );
    let mut tokens = 0;
    for (row, e) in members.iter().enumerate() {
        let n = e.ids.len() - 1;
        tokens += n;
        for t in 0..n {
            inputs[row * seq + t] = e.ids[t];
            targets[row * seq + t] = e.ids[t + 1];
            weights[row * seq + t] = f32::from(e.loss_mask[t + 1]);
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(inputs, (b, seq), device)?,
        targets: Tensor::from_vec(targets, (b, seq), device)?,
        weights: Tensor::from_vec(weights, (b, seq), device)?,
        tokens,
        source: source_batch(members, device)?,
    })
}

/// The sources of a sequence-to-sequence batch, right-padded with 0 and masked.
fn source_batch(members: &[&Example], device: &Device) -> Result<Option<(Tensor, Tensor)>> {
    let len = members.iter().map(|e| e.source.len()).max().unwrap_or(0);
    if len == 0 {
        return Ok(None);
    }
    let b = members.len();
    let (mut ids, mut mask) = (vec![0u32; b * len], vec![0f32; b * len]);
    for (row, e) in members.iter().enumerate() {
        ids[row * len..][..e.source.len()].copy_from_slice(&e.source);
        mask[row * len..][..e.source.len()].fill(1.0);
    }
    Ok(Some((
        Tensor::from_vec(ids, (b, len), device)?,
        Tensor::from_vec(mask, (b, len), device)?,
    )))
}
