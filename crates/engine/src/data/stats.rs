//! Token statistics of a tokenized dataset, and previews with the trained text marked.

use serde::Serialize;

use super::batch::Example;
use super::encode::Rendered;

/// Token-length distribution of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenStats {
    /// Number of examples.
    pub examples: usize,
    /// Tokens in all examples.
    pub total_tokens: usize,
    /// Of which trained.
    pub trained_tokens: usize,
    /// Shortest example.
    pub min: usize,
    /// Median length.
    pub median: usize,
    /// 95th percentile length.
    pub p95: usize,
    /// Longest example.
    pub max: usize,
    /// Examples longer than `max_len` (they will be truncated).
    pub over_max_len: usize,
    /// The limit `over_max_len` counts against.
    pub max_len: usize,
}

/// Statistics of `examples` against a length limit.
pub fn token_stats(examples: &[Example], max_len: usize) -> TokenStats {
    let mut lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    lengths.sort_unstable();
    // Nearest-rank percentile.
    let pct = |p: f64| -> usize {
        if lengths.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * lengths.len() as f64).ceil() as usize;
        lengths[rank.clamp(1, lengths.len()) - 1]
    };
    TokenStats {
        examples: examples.len(),
        total_tokens: lengths.iter().sum(),
        trained_tokens: examples
            .iter()
            .map(|e| e.loss_mask.iter().filter(|&&m| m == 1).count())
            .sum(),
        min: lengths.first().copied().unwrap_or(0),
        median: pct(50.0),
        p95: pct(95.0),
        max: lengths.last().copied().unwrap_or(0),
        over_max_len: lengths.iter().filter(|&&l| l > max_len).count(),
        max_len,
    }
}

/// The text with trained ranges wrapped in `open` … `close` markers.
pub fn mark_trained(rendered: &Rendered, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(rendered.text.len() + 16);
    let mut at = 0;
    for r in &rendered.trained {
        let (start, end) = (r.start.max(at), r.end.min(rendered.text.len()));
        if start >= end {
            continue;
        }
        out.push_str(rendered.text.get(at..start).unwrap_or(""));
        out.push_str(open);
        out.push_str(rendered.text.get(start..end).unwrap_or(""));
        out.push_str(close);
        at = end;
    }
    out.push_str(rendered.text.get(at..).unwrap_or(""));
    out
}
