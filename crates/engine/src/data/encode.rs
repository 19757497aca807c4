//! Records to token ids with a loss mask. Prompt/completion: the completion and EOS are
//! trained. Chat: the conversation is rendered once with the model's template and the tokens
//! inside assistant turns (their end-of-turn tokens included) are trained, so the model learns
//! to stop. With `TrainOn::All` every token is trained.

use std::ops::Range;

use super::batch::Example;
pub use super::config::TrainOn;
use super::format::Record;
use crate::chat::{ChatTemplate, Message};
use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

/// A record as text, with the byte ranges that are trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The text the model sees (for chat: the template's output).
    pub text: String,
    /// Byte ranges of `text` that are trained.
    pub trained: Vec<Range<usize>>,
}

/// A list of one byte range.
fn one(range: Range<usize>) -> Vec<Range<usize>> {
    std::iter::once(range).collect()
}

/// Tokenizes records for one model.
pub struct Encoder<'a> {
    tok: &'a TextTokenizer,
    template: ChatTemplate,
    train_on: TrainOn,
    /// For an encoder-decoder model: the decoder's start token (see [`Encoder::seq2seq`]).
    decoder_start: Option<u32>,
}

impl<'a> Encoder<'a> {
    /// An encoder using the model's chat template (ChatML when it has none).
    pub fn new(tok: &'a TextTokenizer, train_on: TrainOn) -> Result<Self> {
        Ok(Self {
            tok,
            template: tok.compiled_chat_template()?,
            train_on,
            decoder_start: None,
        })
    }

    /// Records read as a source and a target for an encoder-decoder model (T5), as PEFT's
    /// sequence-to-sequence examples are built: the prompt (an alpaca record's instruction and
    /// input) is the source, framed as the tokenizer frames it (T5 appends its EOS); the
    /// completion and the EOS are the target, every token trained, after `start`.
    pub fn seq2seq(self, start: Option<u32>) -> Self {
        Self {
            decoder_start: start,
            ..self
        }
    }

    fn encode_seq2seq(&self, record: &Record, start: u32) -> Result<Example> {
        let (prompt, completion) = source_and_target(record)?;
        let source = self.tok.encode_framed(&prompt)?;
        let mut ids = vec![start];
        ids.extend(self.tok.encode(&completion, false)?);
        ids.extend(self.tok.eos_ids().first());
        let mut loss_mask = vec![1u8; ids.len()];
        loss_mask[0] = 0;
        Ok(Example {
            ids,
            loss_mask,
            source,
        })
    }

    /// The text of a chat record and the byte ranges of its assistant turns, found by
    /// rendering each prefix of the conversation the way generation would see it.
    fn render_chat(&self, messages: &[Message]) -> Result<Rendered> {
        let text = self.template.render(messages, false)?;
        let mut trained = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.template.render(&messages[..i], true)?;
            let through = self.template.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !text.starts_with(&through) {
                return Err(EngineError::config(
                    "chat_template",
                    "renders earlier turns differently once later turns follow, so assistant turns cannot be located; use train_on = \"all\"",
                ));
            }
            trained.push(before.len()..through.len());
        }
        Ok(Rendered { text, trained })
    }

    /// The record as the model sees it, with the trained byte ranges (for previews). For an
    /// encoder-decoder model: the source, a line break, then the target, which is trained.
    pub fn render(&self, record: &Record) -> Result<Rendered> {
        // Text and completions end with the EOS token that `encode` appends.
        let eos = self.tok.eos_token();
        if self.decoder_start.is_some() {
            let (prompt, completion) = source_and_target(record)?;
            let source = format!("{prompt}{eos}\n");
            return Ok(Rendered {
                trained: one(source.len()..source.len() + completion.len() + eos.len()),
                text: format!("{source}{completion}{eos}"),
            });
        }
        let mut rendered = match record {
            Record::Text(t) => Rendered {
                text: format!("{t}{eos}"),
                trained: one(0..t.len() + eos.len()),
            },
            Record::PromptCompletion { prompt, completion } => Rendered {
                text: format!("{prompt}{completion}{eos}"),
                trained: one(prompt.len()..prompt.len() + completion.len() + eos.len()),
            },
            Record::Chat(messages) => self.render_chat(messages)?,
        };
        if self.train_on == TrainOn::All {
            rendered.trained = one(0..rendered.text.len());
        }
        Ok(rendered)
    }

    /// Token ids and loss mask of one record.
    pub fn encode(&self, record: &Record) -> Result<Example> {
        if let Some(start) = self.decoder_start {
            return self.encode_seq2seq(record, start);
        }
        let all = self.train_on == TrainOn::All;
        let eos: Vec<u32> = self.tok.eos_ids().first().copied().into_iter().collect();
        let (mut ids, mut mask) = match record {
            Record::Text(t) => (self.tok.encode(t, true)?, Vec::new()),
            Record::PromptCompletion { prompt, completion } => {
                // Tokenized apart so the first completion token never merges into the prompt.
                let mut ids = self.tok.encode(prompt, true)?;
                let mask = vec![u8::from(all); ids.len()];
                ids.extend(self.tok.encode(completion, false)?);
                (ids, mask)
            }
            Record::Chat(messages) => {
                let rendered = self.render_chat(messages)?;
                let (ids, offsets) = self.tok.encode_with_offsets(&rendered.text)?;
                let mask = offsets
                    .iter()
                    .map(|&(start, end)| {
                        let inside = rendered
                            .trained
                            .iter()
                            .any(|r| start < r.end && end.max(start + 1) > r.start);
                        u8::from(all || inside)
                    })
                    .collect();
                // The template writes its own end-of-turn tokens.
                return Ok(Example {
                    ids,
                    loss_mask: mask,
                    source: Vec::new(),
                });
            }
        };
        ids.extend(&eos);
        mask.resize(ids.len(), 1u8);
        Ok(Example {
            ids,
            loss_mask: mask,
            source: Vec::new(),
        })
    }
}

/// A record as a sequence-to-sequence pair: a prompt and its completion, or a chat of one
/// user turn (after an optional system message, joined to it by a blank line) and its answer
/// (an alpaca record reads as one).
fn source_and_target(record: &Record) -> Result<(String, String)> {
    let refuse = || {
        EngineError::config(
            "format",
            "an encoder-decoder model trains on records with a source and a target (prompt and completion, alpaca, or a chat of one question and its answer)",
        )
    };
    match record {
        Record::PromptCompletion { prompt, completion } => Ok((prompt.clone(), completion.clone())),
        Record::Chat(messages) => match messages.as_slice() {
            [user, answer] if user.role == "user" && answer.role == "assistant" => {
                Ok((user.content.clone(), answer.content.clone()))
            }
            [system, user, answer]
                if system.role == "system" && user.role == "user" && answer.role == "assistant" =>
            {
                Ok((
                    format!("{}\n\n{}", system.content, user.content),
                    answer.content.clone(),
                ))
            }
            _ => Err(refuse()),
        },
        Record::Text(_) => Err(refuse()),
    }
}
