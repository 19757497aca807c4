//! New text as a sequence's tokens come: decoded a few tokens at a time (not the whole answer
//! per token), whole characters only. The playground and the server stream with it.

use peft_studio_engine::tokenizer::TextTokenizer;

use crate::error::Result;

/// Turns a sequence's tokens into text pieces as they come. Decodes the tokens since the
/// last piece together with a few before them (a token's text depends on its neighbours in
/// byte-level and SentencePiece vocabularies), as text-generation-inference does.
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Where the decoded context starts.
    prefix: usize,
    /// Where the tokens not yet sent start.
    read: usize,
}

impl TextStream {
    /// The new text `id` completes, if it completes any whole characters.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        match after.get(before.len()..) {
            Some(new) if !new.is_empty() && !new.ends_with('\u{fffd}') => {
                let new = new.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                Ok(Some(new))
            }
            _ => Ok(None),
        }
    }

    /// Whatever was held back at the end (an unfinished character).
    pub fn rest(&self, tok: &TextTokenizer) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        Ok(after.get(before.len()..).unwrap_or_default().to_string())
    }
}
