//! The playground: one base model loaded once; generations with the base or with any adapter,
//! switched by detaching and attaching (the base is never reloaded), streamed token by token.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::DType;
use peft_studio_engine::chat::Message;
use peft_studio_engine::generate::{generate_until, GenerateOptions};
use peft_studio_engine::library::{resolve, studio_home};
use peft_studio_engine::model::{load_model, LlamaModel};
use peft_studio_engine::peft::load::{attach_adapter, detach_adapters};
use peft_studio_engine::run::default_device;
use peft_studio_engine::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::State;

use crate::error::{blocking, CommandError, CommandResult};

struct Loaded {
    name: String,
    model: LlamaModel,
    tok: TextTokenizer,
}

/// The playground's model, shared by its commands.
#[derive(Default)]
pub struct Playground {
    loaded: Arc<Mutex<Option<Loaded>>>,
    stop: Arc<AtomicBool>,
}

/// The lock is poisoned only when an earlier generation panicked.
fn broken() -> CommandError {
    CommandError::with_hint(
        "the playground's model was left unusable by an earlier failure",
        "restart the studio",
    )
}

/// What loading reports.
#[derive(Debug, Serialize)]
pub struct LoadedModel {
    /// The model's name.
    pub name: String,
    /// How long loading took.
    pub load_ms: u64,
}

/// Loads `model` (an installed model's name or a folder) as the playground's base, unless it
/// is loaded already.
#[tauri::command]
pub async fn playground_load(
    model: String,
    state: State<'_, Playground>,
) -> CommandResult<LoadedModel> {
    let slot = state.loaded.clone();
    blocking(move || {
        let start = Instant::now();
        let mut guard = slot.lock().map_err(|_| broken())?;
        if guard.as_ref().is_some_and(|l| l.name == model) {
            return Ok(LoadedModel {
                name: model,
                load_ms: 0,
            });
        }
        let dir = resolve(&studio_home(), Path::new(&model))?;
        let loaded = load_model(&dir, DType::F32, &default_device())?;
        let tok = TextTokenizer::load(&dir, &loaded.config().eos_token_ids)?;
        *guard = Some(Loaded {
            name: model.clone(),
            model: loaded,
            tok,
        });
        Ok(LoadedModel {
            name: model,
            load_ms: start.elapsed().as_millis() as u64,
        })
    })
    .await
}

/// One generation request.
#[derive(Debug, Deserialize)]
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
}

/// Generates with the loaded base and the chosen adapter; new text goes to `on_text` as it
/// forms. Stops at the token limit, at EOS, or when `playground_stop` is called.
#[tauri::command]
pub async fn playground_generate(
    request: GenerateRequest,
    on_text: Channel<String>,
    state: State<'_, Playground>,
) -> CommandResult<Generation> {
    let (slot, stop) = (state.loaded.clone(), state.stop.clone());
    blocking(move || {
        let mut guard = slot.lock().map_err(|_| broken())?;
        let loaded = guard.as_mut().ok_or_else(|| {
            CommandError::with_hint("no model is loaded in the playground", "load a model first")
        })?;
        detach_adapters(&mut loaded.model);
        if let Some(dir) = &request.adapter {
            attach_adapter(&mut loaded.model, dir, Some(0.0))?;
        }
        let prompt = if request.chat {
            loaded.tok.compiled_chat_template()?.render(
                &[Message {
                    role: "user".into(),
                    content: request.prompt.clone(),
                }],
                true,
            )?
        } else {
            request.prompt.clone()
        };
        let ids = loaded.tok.encode(&prompt, !request.chat)?;
        stop.store(false, Ordering::Relaxed);
        let start = Instant::now();
        let (mut produced, mut sent) = (Vec::new(), 0usize);
        let tok = &loaded.tok;
        generate_until(&loaded.model, &ids, tok.eos_ids(), &request.options, |id| {
            produced.push(id);
            // Send only whole characters: a token may end inside a multi-byte one.
            if let Ok(text) = tok.decode(&produced) {
                if text.len() > sent && text.is_char_boundary(sent) && !text.ends_with('\u{fffd}') {
                    let _ = on_text.send(text[sent..].to_string());
                    sent = text.len();
                }
            }
            !stop.load(Ordering::Relaxed)
        })?;
        let text = tok.decode(&produced)?;
        if let Some(rest) = text.get(sent..).filter(|r| !r.is_empty()) {
            let _ = on_text.send(rest.to_string());
        }
        Ok(Generation {
            text,
            tokens: produced.len(),
            ms: start.elapsed().as_millis() as u64,
        })
    })
    .await
}

/// Stops the generation in progress after its current token.
#[tauri::command]
pub fn playground_stop(state: State<'_, Playground>) {
    state.stop.store(true, Ordering::Relaxed);
}
