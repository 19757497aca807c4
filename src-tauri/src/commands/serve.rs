//! The Serve screen: the OpenAI-compatible server (`app::serve`) started and stopped from the
//! window, on this machine's loopback only, serving a library model and recorded adapters
//! (named by their catalog ids, so the page cannot point the server at other folders).

use std::sync::{Arc, Mutex};

use peft_studio_app::serve::{ModelCard, RequestLine, ServeOptions, Server};
use serde::{Deserialize, Serialize};

use super::open_catalog;
use crate::error::{blocking, CommandError, CommandResult};

/// The window's server, if one runs.
#[derive(Default)]
pub struct Served(Arc<Mutex<Option<Server>>>);

/// An adapter to serve: the name requests use, and its catalog id.
#[derive(Debug, Deserialize)]
pub struct ServedAdapter {
    /// The name requests put in `model`.
    pub name: String,
    /// The adapter's catalog id.
    pub id: i64,
}

/// What the Serve screen asks for.
#[derive(Debug, Deserialize)]
pub struct ServeRequest {
    /// An installed model's name.
    pub model: String,
    /// Adapters to serve.
    pub adapters: Vec<ServedAdapter>,
    /// The port (0: any free one).
    pub port: u16,
    /// A key requests must carry, if any.
    pub api_key: Option<String>,
    /// `f32` or `bf16`.
    pub precision: String,
}

/// The server as the screen shows it.
#[derive(Debug, Serialize)]
pub struct ServeStatus {
    /// Whether it runs.
    pub running: bool,
    /// `http://127.0.0.1:PORT/v1` while it runs.
    pub base_url: Option<String>,
    /// What it serves (the base first).
    pub models: Vec<ModelCard>,
    /// The latest answered requests, oldest first.
    pub log: Vec<RequestLine>,
}

fn status(server: Option<&Server>) -> ServeStatus {
    match server {
        Some(s) => ServeStatus {
            running: true,
            base_url: Some(format!("http://{}/v1", s.addr())),
            models: s.registry().models(),
            log: s.registry().log(),
        },
        None => ServeStatus {
            running: false,
            base_url: None,
            models: Vec::new(),
            log: Vec::new(),
        },
    }
}

fn broken() -> CommandError {
    CommandError::with_hint(
        "the server's state was left unusable by an earlier failure",
        "restart the studio",
    )
}

/// Starts serving (stopping a server that runs first).
#[tauri::command]
pub async fn serve_start(
    request: ServeRequest,
    state: tauri::State<'_, Served>,
) -> CommandResult<ServeStatus> {
    let served = state.0.clone();
    blocking(move || {
        let recorded = open_catalog()?.adapters(None)?;
        let adapters = request
            .adapters
            .iter()
            .map(|a| {
                let record = recorded.iter().find(|r| r.id == a.id).ok_or_else(|| {
                    CommandError::with_hint(
                        format!("adapter {} is not in the catalog", a.id),
                        "pick one from the list",
                    )
                })?;
                Ok((a.name.clone(), std::path::PathBuf::from(&record.path)))
            })
            .collect::<CommandResult<Vec<_>>>()?;
        let opts = ServeOptions {
            model: request.model.into(),
            adapters,
            port: request.port,
            api_key: request.api_key.filter(|k| !k.is_empty()),
            precision: request.precision.parse()?,
            ..ServeOptions::default()
        };
        let mut guard = served.lock().map_err(|_| broken())?;
        if let Some(old) = guard.take() {
            old.stop();
        }
        *guard = Some(Server::start(&opts, None)?);
        Ok(status(guard.as_ref()))
    })
    .await
}

/// Stops the server; answers in progress end first.
#[tauri::command]
pub async fn serve_stop(state: tauri::State<'_, Served>) -> CommandResult<ServeStatus> {
    let served = state.0.clone();
    blocking(move || {
        let old = served.lock().map_err(|_| broken())?.take();
        if let Some(s) = old {
            s.stop();
        }
        Ok(status(None))
    })
    .await
}

/// The server's address, models and request log (the screen polls it).
#[tauri::command]
pub fn serve_status(state: tauri::State<'_, Served>) -> CommandResult<ServeStatus> {
    let guard = state.0.lock().map_err(|_| broken())?;
    Ok(status(guard.as_ref()))
}
