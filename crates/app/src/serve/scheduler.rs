//! The model's own thread: it owns the base model and the loaded adapters, admits requests
//! as they come and decodes every live one in the same step (continuous batching, each row
//! with its own adapter), sending each request's text as it forms. A request whose client
//! went away is dropped at the next step and its slot freed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use peft_studio_engine::generate::{GenerateOptions, Sampler};
use peft_studio_engine::model::fused::decode::{Decoder, RowAdapter, Sequence};
use peft_studio_engine::model::LlamaModel;
use peft_studio_engine::peft::load::attach_adapter;
use peft_studio_engine::tokenizer::TextTokenizer;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::openai::{ApiError, Finish};
use super::text::Stops;
use super::Registry;
use crate::text::TextStream;

/// What the model thread is asked.
pub enum Command {
    /// Answer a request.
    Generate(Job),
    /// Load an adapter folder under a name.
    Load {
        /// The name.
        name: String,
        /// The folder.
        dir: PathBuf,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Unload an adapter.
    Unload {
        /// Its name.
        name: String,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
}

/// One request for the model thread.
pub struct Job {
    /// The base model's name or an adapter's.
    pub model: String,
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// New tokens at most.
    pub max_tokens: usize,
    /// Sampling.
    pub options: GenerateOptions,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Where its text goes; closed when the client has gone.
    pub events: UnboundedSender<Event>,
}

/// What a request hears back.
#[derive(Debug)]
pub enum Event {
    /// New text.
    Text(String),
    /// The end, with the token counts.
    Done {
        /// Why it ended.
        finish: Finish,
        /// The prompt's tokens.
        prompt_tokens: usize,
        /// New tokens.
        completion_tokens: usize,
    },
    /// It failed.
    Failed(ApiError),
}

/// How an answer ended.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Eos,
    StopString,
    Length,
}

/// A request being decoded.
struct Live {
    job: Job,
    seq: Sequence,
    sampler: Sampler,
    text: TextStream,
    stops: Stops,
    /// The tokens the next step takes: the prompt, then the last new token.
    input: Vec<u32>,
    produced: usize,
}

/// The model thread's state.
pub struct Scheduler {
    base: LlamaModel,
    tok: Arc<TextTokenizer>,
    adapters: BTreeMap<String, Arc<RowAdapter>>,
    registry: Arc<Registry>,
    max_batch: usize,
}

impl Scheduler {
    /// Over a loaded base (adapters come with `Command::Load`).
    pub fn new(
        base: LlamaModel,
        tok: Arc<TextTokenizer>,
        registry: Arc<Registry>,
        max_batch: usize,
    ) -> Self {
        Self {
            base,
            tok,
            adapters: BTreeMap::new(),
            registry,
            max_batch: max_batch.max(1),
        }
    }

    /// Loads the adapter in `dir` as `name` onto a copy of the base (which shares its
    /// weights) and keeps its LoRA branches.
    pub fn load(&mut self, name: &str, dir: &std::path::Path) -> Result<(), ApiError> {
        let refuse = |message: String| ApiError::invalid("path", message);
        if name == self.registry.base_name() {
            return Err(ApiError::invalid("name", "is the base model's name"));
        }
        let mut model = self.base.clone();
        attach_adapter(&mut model, dir, Some(0.0))
            .map_err(|e| refuse(format!("{}: {e}", dir.display())))?;
        let adapter = RowAdapter::of(&model)
            .map_err(|e| refuse(format!("{}: {e}", dir.display())))?
            .ok_or_else(|| refuse(format!("{}: the adapter changes nothing", dir.display())))?;
        self.adapters.insert(name.to_string(), adapter);
        self.registry.add(name, dir);
        Ok(())
    }

    /// Serves commands until every sender is gone.
    pub fn run(mut self, commands: Receiver<Command>) {
        let base = self.base.clone();
        let decoder = match Decoder::new(&base) {
            Ok(d) => d,
            // `serve` checked the model before starting this thread.
            Err(_) => return,
        };
        let mut live: Vec<Live> = Vec::new();
        loop {
            // Wait when idle; otherwise take what has come, up to the batch.
            if live.is_empty() {
                match commands.recv() {
                    Ok(c) => self.handle(c, &decoder, &mut live),
                    Err(_) => return,
                }
            }
            while live.len() < self.max_batch {
                match commands.try_recv() {
                    Ok(c) => self.handle(c, &decoder, &mut live),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if live.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            // Clients that went away free their slots.
            live.retain(|l| !l.job.events.is_closed());
            if live.is_empty() {
                continue;
            }
            self.step(&decoder, &mut live);
        }
    }

    fn handle(&mut self, command: Command, decoder: &Decoder, live: &mut Vec<Live>) {
        match command {
            Command::Generate(job) => {
                let events = job.events.clone();
                match self.admit(job, decoder) {
                    Ok(l) => live.push(l),
                    Err(e) => {
                        let _ = events.send(Event::Failed(e));
                    }
                }
            }
            Command::Load { name, dir, reply } => {
                let _ = reply.send(self.load(&name, &dir));
            }
            Command::Unload { name, reply } => {
                let done = match self.adapters.remove(&name) {
                    Some(_) => {
                        self.registry.remove(&name);
                        Ok(())
                    }
                    None => Err(unknown(&name)),
                };
                let _ = reply.send(done);
            }
        }
    }

    /// A request's sequence, with its adapter; refused when the adapter is gone (unloaded
    /// after the request was checked).
    fn admit(&self, job: Job, decoder: &Decoder) -> Result<Live, ApiError> {
        let adapter = if job.model == self.registry.base_name() {
            None
        } else {
            match self.adapters.get(&job.model) {
                Some(a) => Some(a.clone()),
                None => return Err(unknown(&job.model)),
            }
        };
        let capacity = job.prompt.len() + job.max_tokens;
        let seq = match decoder.sequence(capacity, adapter) {
            Ok(s) => s,
            Err(e) => return Err(ApiError::invalid("max_tokens", e.to_string())),
        };
        Ok(Live {
            sampler: Sampler::new(&job.options),
            stops: Stops::new(job.stop.clone()),
            input: job.prompt.clone(),
            text: TextStream::default(),
            produced: 0,
            seq,
            job,
        })
    }

    /// One decoding step of every live request; the finished ones leave.
    fn step(&self, decoder: &Decoder, live: &mut Vec<Live>) {
        let mut batch: Vec<(&mut Sequence, &[u32])> = live
            .iter_mut()
            .map(|l| (&mut l.seq, l.input.as_slice()))
            .collect();
        let logits = match decoder.step(&mut batch) {
            Ok(l) => l,
            Err(e) => {
                let e = ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "decoding_failed",
                    e.to_string(),
                );
                for l in live.drain(..) {
                    let _ = l.job.events.send(Event::Failed(e.clone()));
                }
                return;
            }
        };
        let mut finished = vec![false; live.len()];
        for ((l, logits), done) in live.iter_mut().zip(&logits).zip(&mut finished) {
            let next = l.sampler.pick(logits);
            let end = if self.tok.eos_ids().contains(&next) {
                Some(End::Eos)
            } else {
                l.produced += 1;
                l.input = vec![next];
                self.emit(l, next)
            };
            let Some(end) = end.or((l.produced >= l.job.max_tokens).then_some(End::Length)) else {
                continue;
            };
            // Text held back (an unfinished character, a possible stop string's start)
            // goes out unless a stop string ended the answer.
            if end != End::StopString {
                let rest = l.text.rest(&self.tok).unwrap_or_default();
                let (mut tail, stopped) = l.stops.push(&rest);
                if !stopped {
                    tail.push_str(&l.stops.finish());
                }
                if !tail.is_empty() {
                    let _ = l.job.events.send(Event::Text(tail));
                }
            }
            let _ = l.job.events.send(Event::Done {
                finish: if end == End::Length {
                    Finish::Length
                } else {
                    Finish::Stop
                },
                prompt_tokens: l.job.prompt.len(),
                completion_tokens: l.produced,
            });
            *done = true;
        }
        let mut i = 0;
        live.retain(|_| {
            i += 1;
            !finished[i - 1]
        });
    }

    /// Sends the text `next` completes; `Some` when a stop string ends the answer.
    fn emit(&self, l: &mut Live, next: u32) -> Option<End> {
        let piece = match l.text.push(&self.tok, next) {
            Ok(Some(p)) => p,
            _ => return None,
        };
        let (out, stopped) = l.stops.push(&piece);
        if !out.is_empty() {
            let _ = l.job.events.send(Event::Text(out));
        }
        stopped.then_some(End::StopString)
    }
}

/// The error for a model name nobody loaded.
pub fn unknown(name: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "model_not_found",
        format!("The model `{name}` does not exist: GET /v1/models lists the base and the adapters served"),
    )
}
