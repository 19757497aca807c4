// The playground: one base model, outputs of the base and of adapters side by side,
// streamed as they form. Switching adapters does not reload the base.
import { invoke, channel, describeError } from "../api.js";
import { h, errorBox } from "../dom.js";

export async function playground(root) {
  const [models, adapters] = await Promise.all([invoke("list_models"), invoke("list_adapters")]);
  const usable = adapters.filter((a) => a.present);
  const model = h("select", { id: "pg-model" }, models.map((m) => h("option", { value: m.name }, m.name)));
  const status = h("span", { class: "muted", id: "pg-status" });
  const prompt = h("textarea", { id: "pg-prompt", rows: 3, placeholder: "Ask something…" }, "What is the capital of France?");
  const chat = h("input", { type: "checkbox", id: "pg-chat", checked: true });
  const num = (id, value, step, label) => h("label", { class: "param" }, h("span", {}, label), h("input", { type: "number", id, value, step }));
  // Base, the newest adapter, and the one before it (or nothing).
  const picks = ["", usable[usable.length - 1]?.path ?? "", usable[usable.length - 2]?.path ?? "-"];
  const columns = picks.map((adapter, i) => {
    const select = h("select", { "data-column": i, class: "pg-adapter" },
      h("option", { value: "-", selected: adapter === "-" }, "(off)"),
      h("option", { value: "", selected: adapter === "" }, "base model (no adapter)"),
      usable.map((a) => h("option", { value: a.path, selected: a.path === adapter }, `run ${a.run_id ?? "?"} · ${a.method} · ${a.path.split("/").slice(-2).join("/")}`)));
    const out = h("pre", { class: "pg-output", "data-column": i });
    const meta = h("small", { class: "muted" });
    return { select, out, meta, box: h("div", { class: "pg-column" }, select, out, meta) };
  });
  const errorArea = h("div", {});
  const generateBtn = h("button", { type: "submit", class: "primary", id: "pg-generate" }, "Generate");
  const stopBtn = h("button", { type: "button", id: "pg-stop", disabled: true, onclick: () => invoke("playground_stop") }, "Stop");

  async function load() {
    status.textContent = `loading ${model.value}…`;
    try {
      const r = await invoke("playground_load", { model: model.value });
      status.textContent = `${r.name} loaded${r.load_ms ? ` in ${(r.load_ms / 1000).toFixed(1)} s` : ""}`;
      status.dataset.loaded = r.name;
    } catch (e) {
      status.textContent = "";
      errorArea.replaceChildren(errorBox(describeError(e)));
    }
  }

  async function run(e) {
    e.preventDefault();
    errorArea.replaceChildren();
    generateBtn.disabled = true;
    stopBtn.disabled = false;
    if (status.dataset.loaded !== model.value) await load();
    const options = {
      max_new_tokens: Number(document.getElementById("pg-max").value),
      temperature: Number(document.getElementById("pg-temp").value),
      top_p: Number(document.getElementById("pg-top-p").value),
      seed: Number(document.getElementById("pg-seed").value),
    };
    for (const c of columns) {
      if (c.select.value === "-") continue;
      c.out.textContent = "";
      c.out.dataset.done = "";
      c.meta.textContent = "";
      try {
        const ch = channel((piece) => { c.out.textContent += piece; });
        const g = await invoke("playground_generate", {
          request: { adapter: c.select.value || null, prompt: prompt.value, chat: chat.checked, options },
          onText: ch,
        });
        c.out.textContent = g.text;
        c.meta.textContent = `${g.tokens} tokens in ${(g.ms / 1000).toFixed(2)} s`;
        c.out.dataset.done = "1";
      } catch (err) {
        errorArea.replaceChildren(errorBox(describeError(err)));
        break;
      }
    }
    generateBtn.disabled = false;
    stopBtn.disabled = true;
  }

  root.append(...[h("h1", {}, "Playground"),
    models.length ? null : errorBox("No models are installed yet."),
    h("div", { class: "row" }, h("label", {}, "Base model ", model), h("button", { type: "button", id: "pg-load", onclick: load }, "Load"), status),
    h("form", { onsubmit: run },
      prompt,
      h("div", { class: "row" }, h("label", {}, chat, " chat template"),
        num("pg-max", 48, "1", "max new tokens"), num("pg-temp", 0, "0.1", "temperature"), num("pg-top-p", 1, "0.05", "top p"), num("pg-seed", 0, "1", "seed")),
      h("div", { class: "actions" }, generateBtn, stopBtn)),
    errorArea,
    h("div", { class: "pg-columns" }, columns.map((c) => c.box)),
    usable.length ? null : h("p", { class: "empty" }, "No adapters yet: finish a run and its adapter appears here.")].filter(Boolean));
}
