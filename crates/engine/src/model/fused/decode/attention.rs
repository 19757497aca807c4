//! One sequence's attention over its own keys and values (`Sequence`'s buffers): each new
//! query sees the cached positions up to its own (within its layer's window).

use super::super::math;
use crate::model::attend::Attend;

/// A sequence's cached keys or values of one layer: [kv_heads, capacity, head_dim].
#[derive(Clone, Copy)]
pub(super) struct Cached<'a> {
    data: &'a [f32],
    capacity: usize,
    head_dim: usize,
}

impl<'a> Cached<'a> {
    pub fn new(data: &'a [f32], capacity: usize, head_dim: usize) -> Self {
        Self {
            data,
            capacity,
            head_dim,
        }
    }

    fn at(&self, head: usize, pos: usize) -> &[f32] {
        &self.data[(head * self.capacity + pos) * self.head_dim..][..self.head_dim]
    }
}

/// Query head `head`'s output [tokens, head_dim] for the sequence's new queries `q`
/// [tokens, q_width] at positions `start..`, its keys and values in kv head `kv_head` of
/// `keys` and `values` (the new positions written already).
pub(super) fn head_output(
    (q, q_width): (&[f32], usize),
    head: usize,
    kv_head: usize,
    (keys, values): (Cached, Cached),
    start: usize,
    attend: Attend,
) -> Vec<f32> {
    let d = keys.head_dim;
    let tokens = q.len() / q_width.max(1);
    let mut out = vec![0.0f32; tokens * d];
    let mut scores = Vec::new();
    for (i, o) in out.chunks_exact_mut(d).enumerate() {
        let qi = &q[i * q_width + head * d..][..d];
        let pos = start + i;
        let first = attend.first_key(pos);
        scores.clear();
        scores.extend((first..=pos).map(|j| {
            let s = math::dot(qi, keys.at(kv_head, j)) * attend.scale as f32;
            match attend.softcap {
                Some(cap) => cap as f32 * (s / cap as f32).tanh(),
                None => s,
            }
        }));
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        scores.iter_mut().for_each(|s| {
            *s = (*s - max).exp();
            sum += *s;
        });
        for (j, w) in (first..=pos).zip(&scores) {
            let w = w / sum;
            o.iter_mut()
                .zip(values.at(kv_head, j))
                .for_each(|(o, v)| *o += w * v);
        }
    }
    out
}
