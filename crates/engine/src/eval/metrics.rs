//! Generation metrics against a reference, on normalised text (docs/EVAL.md): exact match
//! and token F1 as SQuAD's script computes them, ROUGE-L's F-measure from the longest common
//! subsequence of tokens, and corpus BLEU-4 (clipped n-gram precisions, geometric mean,
//! brevity penalty, no smoothing).

use std::collections::HashMap;

/// SQuAD's normaliser: lower case, ASCII punctuation removed, the articles a/an/the removed,
/// whitespace collapsed.
pub fn normalise(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tokens(s: &str) -> Vec<String> {
    normalise(s)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// 1 when the normalised texts are equal.
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(normalise(prediction) == normalise(reference)))
}

/// The harmonic mean of token precision and recall (tokens counted with multiplicity); 1 when
/// both are empty.
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (tokens(prediction), tokens(reference));
    if p.is_empty() || r.is_empty() {
        return f64::from(u8::from(p == r));
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &r {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str()).filter(|c| **c > 0) {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// ROUGE-L's F-measure (β = 1) from the longest common subsequence of the tokens.
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (tokens(prediction), tokens(reference));
    if p.is_empty() || r.is_empty() {
        return f64::from(u8::from(p == r));
    }
    let mut row = vec![0usize; r.len() + 1];
    for a in &p {
        let mut diagonal = 0;
        for (j, b) in r.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if a == b {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    let lcs = row[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / p.len() as f64, lcs / r.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// Corpus BLEU-4 over (prediction, reference) pairs: n-gram matches clipped by the
/// reference's counts and summed over the corpus for n = 1..4, their precisions' geometric
/// mean times the brevity penalty `min(1, e^(1 − r/c))`; 0 when any precision is 0.
pub fn corpus_bleu(pairs: &[(String, String)]) -> f64 {
    let (mut matched, mut total) = ([0usize; 4], [0usize; 4]);
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    for (prediction, reference) in pairs {
        let (p, r) = (tokens(prediction), tokens(reference));
        hyp_len += p.len();
        ref_len += r.len();
        for n in 1..=4 {
            let grams = |t: &[String]| {
                let mut m: HashMap<Vec<String>, usize> = HashMap::new();
                for g in t.windows(n) {
                    *m.entry(g.to_vec()).or_default() += 1;
                }
                m
            };
            let (pg, rg) = (grams(&p), grams(&r));
            total[n - 1] += p.len().saturating_sub(n - 1);
            matched[n - 1] += pg
                .iter()
                .map(|(g, c)| (*c).min(rg.get(g).copied().unwrap_or(0)))
                .sum::<usize>();
        }
    }
    if hyp_len == 0 || matched.contains(&0) {
        return 0.0;
    }
    let log_precision: f64 = (0..4)
        .map(|i| (matched[i] as f64 / total[i] as f64).ln())
        .sum::<f64>()
        / 4.0;
    let brevity = if hyp_len >= ref_len {
        1.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    brevity * log_precision.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normaliser_and_the_scores_match_their_definitions() {
        assert_eq!(
            normalise("The  Eiffel Tower, in Paris!"),
            "eiffel tower in paris"
        );
        assert_eq!(exact_match("Paris.", "paris"), 1.0);
        assert_eq!(exact_match("Paris, France", "paris"), 0.0);
        // 2 common of 3 predicted and 2 referenced: P = 2/3, R = 1, F1 = 0.8.
        assert!((token_f1("paris france europe", "paris france") - 0.8).abs() < 1e-12);
        assert_eq!(token_f1("london", "paris"), 0.0);
        // The longest common subsequence is 3 of 4 tokens on each side.
        assert!((rouge_l("x y z w", "x z w v") - 0.75).abs() < 1e-12);
        assert_eq!(corpus_bleu(&[("x y z w".into(), "x y z w".into())]), 1.0);
        assert_eq!(corpus_bleu(&[("x y".into(), "x y z w".into())]), 0.0);
        // The last word differs: 1- to 4-gram precisions 5/6, 4/5, 3/4, 2/3.
        let b = corpus_bleu(&[(
            "one two three four five six".into(),
            "one two three four five seven".into(),
        )]);
        let expect =
            ((5.0f64 / 6.0).ln() + (4.0f64 / 5.0).ln() + (3.0f64 / 4.0).ln() + (2.0f64 / 3.0).ln())
                / 4.0;
        assert!((b - expect.exp()).abs() < 1e-12, "{b}");
    }
}
