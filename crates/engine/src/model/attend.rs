//! How a layer's queries attend (scale, sliding window, score capping): the one description
//! the composed and the fused attention both read.

/// How a layer's queries attend: the factor on their scores and, for a sliding-window
/// layer, how many positions back they see (their own included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attend {
    /// Factor on `q·k` (`head_dim^-½` unless the model says otherwise).
    pub scale: f64,
    /// Keys a query sees, its own included; `None`: every earlier key.
    pub window: Option<usize>,
    /// Scores become `cap · tanh(score / cap)` before the mask and softmax (Gemma 2).
    pub softcap: Option<f64>,
}

impl Attend {
    /// Plain causal attention scaled by `head_dim^-½`.
    pub fn causal(head_dim: usize) -> Self {
        Self {
            scale: 1.0 / (head_dim as f64).sqrt(),
            window: None,
            softcap: None,
        }
    }

    /// The first key position the query at position `pos` sees.
    pub fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}
