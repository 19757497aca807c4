//! Asking a running server to load or unload an adapter (the CLI's `adapters load` and
//! `adapters unload`): one HTTP/1.1 request over a plain TCP connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::error::{AppError, Result};

/// A server's address as `http://HOST:PORT` (the scheme optional).
fn host_port(server: &str) -> Result<&str> {
    let rest = server.strip_prefix("http://").unwrap_or(server);
    if server.starts_with("https://") {
        return Err(AppError::Invalid(format!(
            "{server}: only http:// servers are reached (serve listens on plain HTTP)"
        )));
    }
    Ok(rest.trim_end_matches('/'))
}

/// Sends `method path` with a JSON body and returns the JSON answer, or the server's error
/// message.
fn request(
    server: &str,
    api_key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let addr = host_port(server)?;
    let fail = |what: &str, e: std::io::Error| AppError::Invalid(format!("{server}: {what}: {e}"));
    let mut stream = TcpStream::connect(addr).map_err(|e| fail("cannot connect", e))?;
    // Loading an adapter reads its files; a minute is plenty.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = api_key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| fail("cannot send", e))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| fail("no answer", e))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or(json!({}));
    if status == 200 {
        return Ok(json);
    }
    let message = json["error"]["message"]
        .as_str()
        .map_or_else(|| body.trim().to_string(), str::to_string);
    Err(AppError::Invalid(format!(
        "{server} answered {status}: {message}"
    )))
}

/// Loads the adapter folder `path` into the server as `name`.
pub fn load_adapter(server: &str, api_key: Option<&str>, name: &str, path: &str) -> Result<()> {
    request(
        server,
        api_key,
        "POST",
        "/v1/adapters",
        Some(json!({"name": name, "path": path})),
    )
    .map(|_| ())
}

/// Unloads the adapter `name` from the server.
pub fn unload_adapter(server: &str, api_key: Option<&str>, name: &str) -> Result<()> {
    request(
        server,
        api_key,
        "DELETE",
        &format!("/v1/adapters/{name}"),
        None,
    )
    .map(|_| ())
}
