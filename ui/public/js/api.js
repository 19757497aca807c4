// The bridge to the Rust commands (src-tauri/src/commands). Errors arrive as
// {message, hint}; `describeError` turns them into one line for the page.

import { errorBox } from "./dom.js";

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

// A native file or folder dialog, opened by the studio (which then accepts the pick in
// its commands); resolves to the chosen path, or null when cancelled or unavailable, and
// rejects with the backend's error when the dialog could not be shown.
export async function pickPath({ directory = false, save = false, filters = [], defaultPath } = {}) {
  if (!available()) return null;
  const options = { directory, save, filters, defaultPath: defaultPath || null };
  const picked = await invoke("choose_path", { options });
  return typeof picked === "string" ? picked : null;
}

// A "Browse…" button that fills `input` from a dialog; a dialog that fails says why next to
// the button.
export function browseButton(input, options, label = "Browse…") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  let failure = null;
  b.addEventListener("click", async () => {
    failure?.remove();
    failure = null;
    try {
      const p = await pickPath({ defaultPath: input.value || undefined, ...options });
      if (p) {
        input.value = p;
        input.dispatchEvent(new Event("input", { bubbles: true }));
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
    } catch (e) {
      failure = errorBox(`The file dialog failed: ${describeError(e)}`);
      b.after(failure);
    }
  });
  return b;
}
