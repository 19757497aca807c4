//! `serve`: the base model and its adapters behind an OpenAI-compatible HTTP API, on this
//! machine's CPU. One model thread (`scheduler`) decodes every live request in the same step,
//! each with its own adapter (the base's weights read once for all of them); the HTTP side
//! (`routes`, axum on tokio) parses, checks and streams. Loopback only unless the user
//! names another address; with an API key, requests without it get 401.

mod openai;
pub mod remote;
mod routes;
mod scheduler;
mod text;

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;
use peft_studio_engine::model::fused::decode::Decoder;
use peft_studio_engine::model::load::load_model_held;
use peft_studio_engine::model::t5::is_t5;
use peft_studio_engine::tokenizer::TextTokenizer;
use serde::Serialize;

pub use openai::ModelCard;

use crate::error::{AppError, Result};
use crate::models::resolve_model;
use crate::plan::Quantization;
use crate::runs::Precision;

/// Requests decoded together at most.
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Requests waiting or decoding at most; more are answered 503 at once.
pub const DEFAULT_MAX_WAITING: usize = 256;
/// Request bodies larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// New tokens when a request names no `max_tokens` (and the context allows).
pub const DEFAULT_MAX_TOKENS: usize = 2048;
/// Lines the request log keeps.
const LOG_LINES: usize = 500;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The base model: an installed model's name or a folder.
    pub model: PathBuf,
    /// Adapters loaded at start: (name, PEFT adapter folder).
    pub adapters: Vec<(String, PathBuf)>,
    /// The address to listen on.
    pub host: String,
    /// The port (0: any free one).
    pub port: u16,
    /// Requests must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The base model's precision in memory.
    pub precision: Precision,
    /// Hold the projections quantized.
    pub quantize: Option<Quantization>,
    /// Requests decoded together at most.
    pub max_batch: usize,
    /// Requests waiting or decoding at most.
    pub max_waiting: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            adapters: Vec::new(),
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            precision: Precision::F32,
            quantize: None,
            max_batch: DEFAULT_MAX_BATCH,
            max_waiting: DEFAULT_MAX_WAITING,
        }
    }
}

/// One answered request, for the log.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLine {
    /// Unix milliseconds when it ended.
    pub at_ms: u64,
    /// The endpoint.
    pub path: String,
    /// The model asked for.
    pub model: String,
    /// The HTTP status (200 for a stream that ended well).
    pub status: u16,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// New tokens.
    pub completion_tokens: usize,
    /// Time taken.
    pub ms: u64,
    /// Streamed.
    pub stream: bool,
}

/// What sees every answered request (the CLI prints it).
pub type OnRequest = Box<dyn Fn(&RequestLine) + Send + Sync>;

/// What the server serves, shared by the HTTP side, the model thread and the front ends.
pub struct Registry {
    base: ModelCard,
    adapters: RwLock<BTreeMap<String, ModelCard>>,
    log: Mutex<VecDeque<RequestLine>>,
    on_request: Option<OnRequest>,
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Registry {
    fn card(id: &str, root: &Path, parent: Option<&str>) -> ModelCard {
        ModelCard {
            id: id.into(),
            object: "model",
            created: unix_seconds(),
            owned_by: "peft-studio",
            parent: parent.map(str::to_string),
            root: root.display().to_string(),
        }
    }

    /// The base model's name.
    pub fn base_name(&self) -> &str {
        &self.base.id
    }

    fn add(&self, name: &str, dir: &Path) {
        let card = Self::card(name, dir, Some(&self.base.id));
        if let Ok(mut a) = self.adapters.write() {
            a.insert(name.into(), card);
        }
    }

    fn remove(&self, name: &str) {
        if let Ok(mut a) = self.adapters.write() {
            a.remove(name);
        }
    }

    /// The base, then the adapters by name.
    pub fn models(&self) -> Vec<ModelCard> {
        let adapters = self.adapters.read().map(|a| a.values().cloned().collect());
        std::iter::once(self.base.clone())
            .chain(adapters.unwrap_or_else(|_| Vec::new()))
            .collect()
    }

    /// Whether `name` is served.
    pub fn has(&self, name: &str) -> bool {
        name == self.base.id || self.adapters.read().is_ok_and(|a| a.contains_key(name))
    }

    fn record(&self, line: RequestLine) {
        if let Some(f) = &self.on_request {
            f(&line);
        }
        if let Ok(mut log) = self.log.lock() {
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    }

    /// The latest answered requests, oldest first.
    pub fn log(&self) -> Vec<RequestLine> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Loads the model and the adapters, binds the address and starts serving; returns once
    /// requests are accepted. `on_request` sees every answered request (the CLI prints it).
    pub fn start(opts: &ServeOptions, on_request: Option<OnRequest>) -> Result<Self> {
        let dir = resolve_model(&opts.model)?;
        if is_t5(&dir) {
            return Err(AppError::Invalid(format!(
                "{}: serve takes decoder-only models; T5 answers in the playground and `generate`",
                dir.display()
            )));
        }
        let dtype = opts.precision.dtype();
        // Inference never trains the projections: an f32 model holds bf16 ones as stored.
        let model = load_model_held(&dir, dtype, &Device::Cpu, opts.quantize, true)?;
        Decoder::new(&model)?;
        let tok = Arc::new(TextTokenizer::load(&dir, &model.config().eos_token_ids)?);
        let template = tok.compiled_chat_template().ok().map(Arc::new);
        let name = opts.model.file_name().map_or_else(
            || opts.model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let registry = Arc::new(Registry {
            base: Registry::card(&name, &dir, None),
            adapters: RwLock::new(BTreeMap::new()),
            log: Mutex::new(VecDeque::new()),
            on_request,
        });
        let context = model.config().max_position_embeddings;
        let mut scheduler =
            scheduler::Scheduler::new(model, tok.clone(), registry.clone(), opts.max_batch);
        for (name, adapter) in &opts.adapters {
            scheduler
                .load(name, adapter)
                .map_err(|e| AppError::Invalid(format!("adapter `{name}`: {}", e.message)))?;
        }
        let listener = TcpListener::bind((opts.host.as_str(), opts.port)).map_err(|e| {
            AppError::Invalid(format!("cannot listen on {}:{}: {e}", opts.host, opts.port))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| AppError::Invalid(format!("the listening socket: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| AppError::Invalid(format!("the listening socket: {e}")))?;
        let (commands, receive) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("serve-model".into())
            .spawn(move || scheduler.run(receive))
            .map_err(|e| AppError::Invalid(format!("cannot start the model thread: {e}")))?;
        let state = routes::State::new(routes::Shared {
            registry: registry.clone(),
            commands,
            tok,
            template,
            api_key: opts.api_key.clone(),
            context,
            max_waiting: opts.max_waiting,
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| AppError::Invalid(format!("cannot start the HTTP runtime: {e}")))?;
        let http = std::thread::Builder::new()
            .name("serve-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let app = routes::router(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|e| AppError::Invalid(format!("cannot start the HTTP thread: {e}")))?;
        Ok(Self {
            addr,
            registry,
            shutdown: Some(shutdown),
            http: Some(http),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The models and the request log.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting, lets the answers in progress end, and returns.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}
