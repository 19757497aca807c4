//! The HTTP side: each endpoint parses and checks its request (errors as OpenAI's clients
//! expect them), hands the model thread a job, and answers whole or as server-sent events.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State as Axum};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use peft_studio_engine::chat::{ChatTemplate, Message};
use peft_studio_engine::generate::GenerateOptions;
use peft_studio_engine::tokenizer::TextTokenizer;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::openai::{
    ApiError, ChatRequest, CompletionRequest, Content, Finish, LoadAdapter, Prompt, Sampling, Stop,
    Usage,
};
use super::scheduler::{unknown, Command, Event, Job};
use super::{unix_seconds, Registry, RequestLine, DEFAULT_MAX_TOKENS, MAX_BODY_BYTES};

/// What every handler reads.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub commands: std::sync::mpsc::Sender<Command>,
    pub tok: Arc<TextTokenizer>,
    pub template: Option<Arc<ChatTemplate>>,
    pub api_key: Option<String>,
    pub context: usize,
    pub max_waiting: usize,
}

/// The handlers' state: what they share, requests in flight, answer ids.
#[derive(Clone)]
pub struct State {
    shared: Arc<Shared>,
    waiting: Arc<AtomicUsize>,
    ids: Arc<AtomicU64>,
}

impl State {
    pub fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
            waiting: Arc::new(AtomicUsize::new(0)),
            ids: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// The API's routes, with the key check and the body limit.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/adapters", post(load_adapter))
        .route("/v1/adapters/{name}", delete(unload_adapter))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_url", "no such endpoint")
        })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// With an API key set, every request but `/health` must carry it as a bearer token.
async fn authorize(Axum(state): Axum<State>, request: Request, next: Next) -> Response {
    let Some(key) = &state.shared.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g == key => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect API key provided",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "You didn't provide an API key: send it as `Authorization: Bearer KEY`",
        )
        .into_response(),
    }
}

async fn models(Axum(state): Axum<State>) -> Response {
    Json(json!({"object": "list", "data": state.shared.registry.models()})).into_response()
}

async fn model(Axum(state): Axum<State>, UrlPath(id): UrlPath<String>) -> Response {
    match state
        .shared
        .registry
        .models()
        .into_iter()
        .find(|m| m.id == id)
    {
        Some(card) => Json(card).into_response(),
        None => unknown(&id).into_response(),
    }
}

/// The body as JSON of type `T`, or the error that says why not (too large, not UTF-8, not
/// JSON, a field of the wrong type: with its line and column).
fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(
            status,
            code,
            format!("the request body could not be read: {}", r.body_text()),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("the request body is not a valid request: {e}"),
        )
    })
}

async fn load_adapter(Axum(state): Axum<State>, body: Result<Bytes, BytesRejection>) -> Response {
    let request: LoadAdapter = match parse(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if request.name.trim().is_empty() {
        return ApiError::invalid("name", "is empty").into_response();
    }
    let (reply, done) = tokio::sync::oneshot::channel();
    let command = Command::Load {
        name: request.name.clone(),
        dir: request.path.into(),
        reply,
    };
    match ask(&state, command, done).await {
        Ok(()) => model(Axum(state), UrlPath(request.name)).await,
        Err(e) => e.into_response(),
    }
}

async fn unload_adapter(Axum(state): Axum<State>, UrlPath(name): UrlPath<String>) -> Response {
    let (reply, done) = tokio::sync::oneshot::channel();
    let command = Command::Unload {
        name: name.clone(),
        reply,
    };
    match ask(&state, command, done).await {
        Ok(()) => Json(json!({"id": name, "object": "model", "deleted": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Sends the model thread a command and waits for its answer.
async fn ask(
    state: &State,
    command: Command,
    done: tokio::sync::oneshot::Receiver<Result<(), ApiError>>,
) -> Result<(), ApiError> {
    state.shared.commands.send(command).map_err(|_| stopped())?;
    done.await.map_err(|_| stopped())?
}

fn stopped() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_stopping",
        "the model thread has stopped",
    )
}

/// A request counted in flight until dropped; refused past the server's limit.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(state: &State) -> Result<Self, ApiError> {
        let before = state.waiting.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(state.waiting.clone());
        if before >= state.shared.max_waiting {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_overloaded",
                format!(
                    "{} requests are already waiting or being answered; try again shortly",
                    state.shared.max_waiting
                ),
            ));
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The decoding settings, new-token limit and stop strings of a request whose prompt has
/// `prompt` tokens, checked.
fn settings(
    s: &Sampling,
    prompt: usize,
    context: usize,
    prompt_field: &'static str,
) -> Result<(GenerateOptions, usize, Vec<String>), ApiError> {
    if let Some(n) = s.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            format!("only n = 1 is served, got {n}"),
        ));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("must be in (0, 1], got {top_p}"),
        ));
    }
    let too_long = |asked: usize| {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt} in the {prompt_field}, {asked} in the completion).",
                prompt + asked
            ),
        );
        e.param = Some(prompt_field);
        e
    };
    if prompt >= context {
        return Err(too_long(0));
    }
    let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("must be at least 1, got {m}"),
            ));
        }
        Some(m) => {
            let m = usize::try_from(m).unwrap_or(usize::MAX);
            if m > context - prompt {
                let mut e = too_long(m);
                e.param = Some("max_tokens");
                return Err(e);
            }
            m
        }
        None => DEFAULT_MAX_TOKENS.min(context - prompt),
    };
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() > 4 => {
            return Err(ApiError::invalid(
                "stop",
                format!("at most 4 stop strings, got {}", v.len()),
            ));
        }
        Some(Stop::Many(v)) => v.clone(),
    };
    let options = GenerateOptions {
        max_new_tokens: max_tokens,
        temperature,
        top_p,
        seed: s.seed.map_or(0, |v| v as u64),
    };
    Ok((options, max_tokens, stop))
}

/// The chat's messages rendered by the model's template, as the playground renders them.
fn chat_prompt(state: &State, request: &ChatRequest) -> Result<Vec<u32>, ApiError> {
    let template = state.shared.template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "messages",
            "this model has no chat template: use /v1/completions",
        )
    })?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "is empty"));
    }
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant") => r,
                other => {
                    return Err(ApiError::invalid(
                        "messages",
                        format!("messages[{i}].role `{other}` is not system, user or assistant"),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .map(|p| match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => Ok(t.as_str()),
                        (kind, _) => Err(ApiError::invalid(
                            "messages",
                            format!("messages[{i}]: only text parts are read, not `{kind}`"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
            };
            Ok(Message {
                role: role.into(),
                content,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    state
        .shared
        .tok
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))
}

async fn chat(Axum(state): Axum<State>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let request: ChatRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let prompt = match known(&state, &request.model).and_then(|()| chat_prompt(&state, &request)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    answer(
        state,
        Kind::Chat,
        request.model,
        prompt,
        &request.sampling,
        started,
    )
    .await
}

async fn completions(Axum(state): Axum<State>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let request: CompletionRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let text = match &request.prompt {
        Prompt::One(p) => Ok(p.as_str()),
        Prompt::Many(v) if v.len() == 1 => Ok(v[0].as_str()),
        Prompt::Many(v) => Err(ApiError::invalid(
            "prompt",
            format!("one prompt per request, got {}", v.len()),
        )),
    };
    let prompt = known(&state, &request.model).and(text).and_then(|t| {
        state
            .shared
            .tok
            .encode(t, true)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))
    });
    match prompt {
        Ok(p) if p.is_empty() => ApiError::invalid("prompt", "is empty").into_response(),
        Ok(p) => {
            answer(
                state,
                Kind::Completion,
                request.model,
                p,
                &request.sampling,
                started,
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

fn known(state: &State, model: &str) -> Result<(), ApiError> {
    if state.shared.registry.has(model) {
        Ok(())
    } else {
        Err(unknown(model))
    }
}

/// Which endpoint answers: the shapes of its answers differ.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    /// Its endpoint, for the log.
    fn path(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Completion => "/v1/completions",
        }
    }

    /// The request field that holds the prompt, for errors about its length.
    fn prompt_field(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Completion => "prompt",
        }
    }

    /// The start of its answers' ids.
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }
    }

    /// Its streamed chunks' `object`.
    fn chunk_object(self) -> &'static str {
        match self {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        }
    }
}

/// How an answer is framed: its id, time and model, and the endpoint's shapes.
struct Frame {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Frame {
    fn whole(&self, text: &str, finish: Finish, usage: Usage) -> serde_json::Value {
        match self.kind {
            Kind::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": null, "finish_reason": finish}],
                "usage": usage,
            }),
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
                "usage": usage,
            }),
        }
    }

    /// A streamed chunk: a piece of text, or (with `finish`) the last one.
    fn chunk(&self, text: Option<&str>, finish: Option<Finish>) -> serde_json::Value {
        match self.kind {
            Kind::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None if finish.is_none() => json!({"role": "assistant", "content": ""}),
                    None => json!({}),
                };
                json!({
                    "id": self.id, "object": self.kind.chunk_object(), "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            }
            Kind::Completion => json!({
                "id": self.id, "object": self.kind.chunk_object(), "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}],
            }),
        }
    }

    /// The usage chunk `stream_options.include_usage` asks for.
    fn usage_chunk(&self, usage: Usage) -> serde_json::Value {
        json!({"id": self.id, "object": self.kind.chunk_object(), "created": self.created,
               "model": self.model, "choices": [], "usage": usage})
    }
}

/// Queues the job and answers: whole, or streamed.
async fn answer(
    state: State,
    kind: Kind,
    model: String,
    prompt: Vec<u32>,
    sampling: &Sampling,
    started: Instant,
) -> Response {
    let (options, max_tokens, stop) = match settings(
        sampling,
        prompt.len(),
        state.shared.context,
        kind.prompt_field(),
    ) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let slot = match Slot::take(&state) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let (events, receive) = unbounded_channel();
    let prompt_tokens = prompt.len();
    let job = Job {
        model: model.clone(),
        prompt,
        max_tokens,
        options,
        stop,
        events,
    };
    if state.shared.commands.send(Command::Generate(job)).is_err() {
        return stopped().into_response();
    }
    let frame = Frame {
        kind,
        id: format!(
            "{}-{}",
            kind.id_prefix(),
            state.ids.fetch_add(1, Ordering::Relaxed)
        ),
        created: unix_seconds(),
        model: model.clone(),
    };
    let log = Log {
        registry: state.shared.registry.clone(),
        path: kind.path(),
        model,
        started,
        stream: sampling.stream,
        prompt_tokens,
    };
    if sampling.stream {
        let usage = sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return stream(frame, receive, usage, log, slot);
    }
    let mut text = String::new();
    let mut receive = receive;
    while let Some(event) = receive.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                drop(slot);
                log.record(200, completion_tokens);
                let usage = Usage::of(prompt_tokens, completion_tokens);
                return Json(frame.whole(&text, finish, usage)).into_response();
            }
            Event::Failed(e) => {
                log.record(e.status.as_u16(), 0);
                return e.into_response();
            }
        }
    }
    stopped().into_response()
}

/// What the request log needs about a request.
struct Log {
    registry: Arc<Registry>,
    path: &'static str,
    model: String,
    started: Instant,
    stream: bool,
    prompt_tokens: usize,
}

impl Log {
    fn record(&self, status: u16, completion_tokens: usize) {
        self.registry.record(RequestLine {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            path: self.path.into(),
            model: self.model.clone(),
            status,
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            ms: self.started.elapsed().as_millis() as u64,
            stream: self.stream,
        });
    }
}

/// The answer as server-sent events: a first chunk (the chat's role), one per piece of
/// text, the last with its finish reason, the usage when asked, then `[DONE]`. A task
/// forwards the model thread's events; when the client goes, the stream is dropped, the
/// task ends and the model thread sees the request's channel closed.
fn stream(
    frame: Frame,
    mut receive: UnboundedReceiver<Event>,
    include_usage: bool,
    log: Log,
    slot: Slot,
) -> Response {
    let (out, events) = unbounded_channel::<Result<Sse, Infallible>>();
    let data = |v: serde_json::Value| Ok(Sse::default().data(v.to_string()));
    tokio::spawn(async move {
        let _slot = slot;
        if matches!(frame.kind, Kind::Chat) && out.send(data(frame.chunk(None, None))).is_err() {
            return;
        }
        while let Some(event) = receive.recv().await {
            let sent = match event {
                Event::Text(t) => out.send(data(frame.chunk(Some(&t), None))),
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    log.record(200, completion_tokens);
                    let _ = out.send(data(frame.chunk(None, Some(finish))));
                    if include_usage {
                        let usage = Usage::of(prompt_tokens, completion_tokens);
                        let _ = out.send(data(frame.usage_chunk(usage)));
                    }
                    let _ = out.send(Ok(Sse::default().data("[DONE]")));
                    return;
                }
                Event::Failed(e) => {
                    log.record(e.status.as_u16(), 0);
                    let _ = out.send(data(e.body()));
                    return;
                }
            };
            if sent.is_err() {
                log.record(499, 0);
                return;
            }
        }
    });
    axum::response::Sse::new(UnboundedReceiverStream::new(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}
