// Serve: the base model and adapters behind an OpenAI-compatible API on this machine
// (loopback), started and stopped here, with the address to give other apps and the
// requests as they are answered.
import { invoke, describeError } from "../api.js";
import { h, errorBox } from "../dom.js";

export async function serveView(root, onLeave) {
  const [models, adapters, first] = await Promise.all([invoke("list_models"), invoke("list_adapters"), invoke("serve_status")]);
  const usable = adapters.filter((a) => a.present);
  const model = h("select", { id: "serve-model" }, models.map((m) => h("option", { value: m.name }, m.name)));
  // Default names: the run's, or the adapter's id where a run has several adapters.
  const taken = new Set();
  const picks = usable.map((a) => {
    const box = h("input", { type: "checkbox", "data-id": a.id, class: "serve-pick" });
    const wanted = a.run_id && !taken.has(`run-${a.run_id}`) ? `run-${a.run_id}` : `adapter-${a.id}`;
    taken.add(wanted);
    const name = h("input", { type: "text", class: "serve-name", value: wanted, "aria-label": "name requests use" });
    return { a, box, name, row: h("label", { class: "row" }, box, ` ${a.method} · ${a.path.split("/").slice(-2).join("/")} as `, name) };
  });
  const port = h("input", { type: "number", id: "serve-port", value: 8000, min: 0, max: 65535 });
  const key = h("input", { type: "password", id: "serve-key", placeholder: "none", autocomplete: "off" });
  const precision = h("select", { id: "serve-precision" }, h("option", { value: "f32" }, "f32"), h("option", { value: "bf16" }, "bf16 (faster, rounded)"));
  const errorArea = h("div", {});
  const state = h("div", { id: "serve-state" });
  const log = h("tbody", { id: "serve-log" });
  const startBtn = h("button", { type: "submit", class: "primary", id: "serve-start" }, "Start");
  const stopBtn = h("button", { type: "button", id: "serve-stop", onclick: stop }, "Stop");

  function show(s) {
    startBtn.textContent = s.running ? "Restart" : "Start";
    stopBtn.disabled = !s.running;
    state.replaceChildren(s.running
      ? h("div", {},
          h("p", {}, "Serving at ", h("code", { id: "serve-url" }, s.base_url), " — point any OpenAI client there; ", h("code", {}, "model"), " picks one of:"),
          h("ul", { id: "serve-models" }, s.models.map((m) => h("li", {}, h("code", {}, m.id), m.parent ? ` (adapter on ${m.parent})` : " (base)"))),
          h("pre", { class: "snippet" }, `from openai import OpenAI\nclient = OpenAI(base_url="${s.base_url}", api_key="${key.value ? "…" : "none"}")\nclient.chat.completions.create(model="${s.models[s.models.length - 1]?.id}", messages=[{"role": "user", "content": "Hello"}])`))
      : h("p", { class: "muted" }, "Not serving."));
    log.replaceChildren(...s.log.slice(-50).reverse().map((l) => h("tr", {},
      h("td", {}, new Date(l.at_ms).toLocaleTimeString()), h("td", {}, String(l.status)), h("td", {}, l.path), h("td", {}, l.model),
      h("td", {}, String(l.prompt_tokens)), h("td", {}, String(l.completion_tokens)), h("td", {}, `${l.ms} ms${l.stream ? " · stream" : ""}`))));
  }

  async function start(e) {
    e.preventDefault();
    errorArea.replaceChildren();
    startBtn.disabled = true;
    try {
      const request = {
        model: model.value,
        adapters: picks.filter((p) => p.box.checked).map((p) => ({ name: p.name.value.trim(), id: p.a.id })),
        port: Number(port.value),
        api_key: key.value || null,
        precision: precision.value,
      };
      show(await invoke("serve_start", { request }));
    } catch (err) {
      errorArea.replaceChildren(errorBox(describeError(err)));
    }
    startBtn.disabled = false;
  }

  async function stop() {
    try {
      show(await invoke("serve_stop"));
    } catch (err) {
      errorArea.replaceChildren(errorBox(describeError(err)));
    }
  }

  const timer = setInterval(async () => {
    try {
      show(await invoke("serve_status"));
    } catch {
      // The next tick tries again.
    }
  }, 1000);
  onLeave(() => clearInterval(timer));

  root.append(...[h("h1", {}, "Serve"),
    models.length ? null : errorBox("No models are installed yet."),
    h("form", { onsubmit: start, id: "serve-form" },
      h("div", { class: "row" }, h("label", {}, "Base model ", model), h("label", {}, "port ", port), h("label", {}, "API key ", key), h("label", {}, "precision ", precision)),
      h("fieldset", {}, h("legend", {}, "Adapters (each request picks one by name)"),
        picks.length ? picks.map((p) => p.row) : h("p", { class: "empty" }, "No adapters yet: the base is served alone.")),
      h("div", { class: "actions" }, startBtn, stopBtn)),
    errorArea, state,
    h("h2", {}, "Requests"),
    h("table", { class: "log" }, h("thead", {}, h("tr", {}, ["time", "status", "endpoint", "model", "prompt", "new", "took"].map((t) => h("th", {}, t)))), log)].filter(Boolean));
  show(first);
}
