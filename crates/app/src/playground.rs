//! Generation for people: a base model (decoder-only, or T5) loaded once, with the base alone or any adapter
//! (switched by detaching and attaching; the base is never reloaded), the prompt wrapped in
//! the chat template when asked, new text streamed in whole characters as it forms. The
//! desktop playground keeps one [`Playground`]; `generate` on the command line loads a
//! [`Loaded`] for one answer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use peft_studio_engine::chat::Message;
use peft_studio_engine::device::default_device;
use peft_studio_engine::generate::{generate_seq2seq, generate_until};
use peft_studio_engine::model::load::load_model_held;
use peft_studio_engine::model::t5::{is_t5, T5Model};
use peft_studio_engine::model::LlamaModel;
use peft_studio_engine::peft::load::{
    attach_adapter, attach_adapter_t5, detach_adapters, detach_adapters_t5,
};
use peft_studio_engine::tokenizer::TextTokenizer;
use peft_studio_engine::EngineError;
use serde::{Deserialize, Serialize};

pub use peft_studio_engine::generate::GenerateOptions;

use crate::error::{AppError, Result};
use crate::models::resolve_model;
use crate::plan::Quantization;
use crate::runs::Precision;
use crate::text::TextStream;

/// A decoder-only model, or an encoder-decoder one (T5).
enum Net {
    Decoder(Box<LlamaModel>),
    Seq2Seq(Box<T5Model>),
}

/// A model with its tokenizer, ready to generate.
pub struct Loaded {
    name: String,
    model: Net,
    tok: TextTokenizer,
}

impl Loaded {
    /// Loads `model` (a folder or an installed model's name) in `precision` on this build's
    /// device, its projections quantized to `quantize` when given. bf16 halves the bytes
    /// each new token reads (decoding is bound by them), at bf16's rounding.
    pub fn open(
        model: &Path,
        quantize: Option<Quantization>,
        precision: Precision,
    ) -> Result<Self> {
        let dir = resolve_model(model)?;
        let dtype = precision.dtype();
        let (net, eos) = if is_t5(&dir) {
            let t5 = T5Model::load_quantized(&dir, dtype, &default_device(), quantize)?;
            let eos = vec![t5.config().eos_token_id];
            (Net::Seq2Seq(Box::new(t5)), eos)
        } else {
            // Inference never trains the projections: an f32 model holds bf16 ones as stored.
            let m = load_model_held(&dir, dtype, &default_device(), quantize, true)?;
            let eos = m.config().eos_token_ids.clone();
            (Net::Decoder(Box::new(m)), eos)
        };
        Ok(Self {
            name: model.display().to_string(),
            model: net,
            tok: TextTokenizer::load(&dir, &eos)?,
        })
    }

    /// Generates an answer to `request`; new text goes to `on_text` as it forms. Stops at the
    /// token limit, at EOS, or when `stop` is set.
    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        on_text: &mut dyn FnMut(&str),
        stop: &AtomicBool,
    ) -> Result<Generation> {
        match &mut self.model {
            Net::Decoder(model) => {
                detach_adapters(model);
                if let Some(dir) = &request.adapter {
                    attach_adapter(model, dir, Some(0.0))?;
                }
            }
            Net::Seq2Seq(_) if request.chat => {
                return Err(EngineError::config(
                    "chat",
                    "T5 has no chat template; send the prompt as it is",
                )
                .into());
            }
            Net::Seq2Seq(model) => {
                detach_adapters_t5(model);
                if let Some(dir) = &request.adapter {
                    attach_adapter_t5(model, dir, Some(0.0))?;
                }
            }
        }
        let prompt = if request.chat {
            self.tok.compiled_chat_template()?.render(
                &[Message {
                    role: "user".into(),
                    content: request.prompt.clone(),
                }],
                true,
            )?
        } else {
            request.prompt.clone()
        };
        let ids = match &self.model {
            // A T5 source ends with its EOS, as its tokenizer frames it.
            Net::Seq2Seq(_) => self.tok.encode_framed(&prompt)?,
            Net::Decoder(_) => self.tok.encode(&prompt, !request.chat)?,
        };
        let start = Instant::now();
        let mut stream = TextStream::default();
        let mut first_token = None;
        let tok = &self.tok;
        let on_token = |id| {
            first_token.get_or_insert_with(|| start.elapsed());
            // Whole characters only: a token may end inside a multi-byte one.
            if let Ok(Some(piece)) = stream.push(tok, id) {
                on_text(&piece);
            }
            !stop.load(Ordering::Relaxed)
        };
        let produced = match &self.model {
            Net::Decoder(m) => generate_until(m, &ids, tok.eos_ids(), &request.options, on_token)?,
            Net::Seq2Seq(m) => generate_seq2seq(m, &ids, &request.options, on_token)?,
        };
        let rest = stream.rest(tok)?;
        if !rest.is_empty() {
            on_text(&rest);
        }
        let text = tok.decode(&produced)?;
        Ok(Generation {
            text,
            tokens: produced.len(),
            ms: start.elapsed().as_millis() as u64,
            first_token_ms: first_token.map(|d| d.as_millis() as u64),
            prompt_tokens: ids.len(),
        })
    }
}

/// One generation request.
#[derive(Debug, Clone, Deserialize)]
pub struct GenerateRequest {
    /// An adapter folder, or none for the base model.
    pub adapter: Option<PathBuf>,
    /// The user's text.
    pub prompt: String,
    /// Wrap the prompt in the model's chat template.
    pub chat: bool,
    /// Sampling settings.
    pub options: GenerateOptions,
}

/// What a generation produced.
#[derive(Debug, Serialize)]
pub struct Generation {
    /// The whole text.
    pub text: String,
    /// New tokens.
    pub tokens: usize,
    /// Time taken.
    pub ms: u64,
    /// Time to the first new token (the prompt's forward pass), if one came.
    pub first_token_ms: Option<u64>,
    /// The prompt's tokens.
    pub prompt_tokens: usize,
}

/// What loading reports.
#[derive(Debug, Serialize)]
pub struct LoadedModel {
    /// The model's name.
    pub name: String,
    /// How long loading took.
    pub load_ms: u64,
}

/// The playground: one model shared by its requests, and a stop flag for the generation in
/// progress.
#[derive(Default)]
pub struct Playground {
    loaded: Arc<Mutex<Option<Loaded>>>,
    stop: Arc<AtomicBool>,
}

/// The lock is poisoned only when an earlier generation panicked.
fn broken() -> AppError {
    AppError::Invalid(
        "the playground's model was left unusable by an earlier failure; restart the studio".into(),
    )
}

impl Playground {
    /// Loads `model` (an installed model's name or a folder) as the base, unless it is loaded
    /// already.
    pub fn load(&self, model: &str) -> Result<LoadedModel> {
        let start = Instant::now();
        let mut guard = self.loaded.lock().map_err(|_| broken())?;
        if guard.as_ref().is_some_and(|l| l.name == model) {
            return Ok(LoadedModel {
                name: model.into(),
                load_ms: 0,
            });
        }
        *guard = Some(Loaded::open(Path::new(model), None, Precision::F32)?);
        Ok(LoadedModel {
            name: model.into(),
            load_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Generates with the loaded base and the request's adapter (see [`Loaded::generate`]);
    /// [`Playground::stop`] ends it after the current token.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let mut guard = self.loaded.lock().map_err(|_| broken())?;
        let loaded = guard.as_mut().ok_or_else(|| {
            AppError::Invalid("no model is loaded in the playground; load a model first".into())
        })?;
        self.stop.store(false, Ordering::Relaxed);
        loaded.generate(request, on_text, &self.stop)
    }

    /// Stops the generation in progress after its current token.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
