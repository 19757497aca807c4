// The bridge to the Rust commands (src-tauri/src/commands). Errors arrive as
// {message, hint}; `describeError` turns them into one line for the page.

const tauri = () => window.__TAURI__ && window.__TAURI__.core;

export function available() {
  return Boolean(tauri());
}

export function invoke(cmd, args = {}) {
  const core = tauri();
  if (!core) return Promise.reject({ message: "The studio's backend is not reachable (open the app, not the page)." });
  return core.invoke(cmd, args);
}

// A channel the backend streams into; `onMessage` gets each message.
export function channel(onMessage) {
  const ch = new (tauri().Channel)();
  ch.onmessage = onMessage;
  return ch;
}

export function describeError(e) {
  if (e && typeof e === "object" && "message" in e) {
    return e.hint ? `${e.message} — ${e.hint}` : e.message;
  }
  return String(e);
}
