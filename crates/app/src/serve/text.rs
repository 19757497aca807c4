//! A request's stop strings over its text as it comes: text that may be the start of one
//! is held back.

/// The stop strings of a request over the text produced so far.
pub struct Stops {
    stops: Vec<String>,
    held: String,
}

impl Stops {
    /// Stops at any of `stops` (empty strings ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Takes a new piece; returns the text that may go out now, and whether a stop string
    /// was met (the text ends before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep back the longest end of the text that begins a stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(|(i, _)| &s[..i]))
            .filter(|start| self.held.ends_with(start))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// The text held back, when the answer ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::Stops;

    #[test]
    fn stop_strings_cut_the_text_and_hold_back_their_starts() {
        let mut s = Stops::new(vec!["\n\nUser:".into(), "END".into()]);
        assert_eq!(s.push("Hello"), ("Hello".into(), false));
        assert_eq!(s.push(" world\n"), (" world".into(), false));
        assert_eq!(s.push("\nUs"), (String::new(), false));
        assert_eq!(s.push("er: hi"), (String::new(), true));
        let mut s = Stops::new(vec!["END".into()]);
        assert_eq!(s.push("a E"), ("a ".into(), false));
        assert_eq!(s.push("x"), ("Ex".into(), false));
        assert_eq!(s.push("E"), (String::new(), false));
        assert_eq!(s.finish(), "E");
        let mut s = Stops::new(vec!["é!".into()]);
        assert_eq!(s.push("caf"), ("caf".into(), false));
        assert_eq!(s.push("é"), (String::new(), false));
        assert_eq!(s.push("!"), (String::new(), true));
    }
}
