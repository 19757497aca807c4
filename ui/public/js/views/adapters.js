// Adapters the runs produced, with where they are and what they need.
import { invoke, describeError, browseButton } from "../api.js";
import { h, errorBox } from "../dom.js";
import { formatBytes } from "../metrics.js";

export async function adaptersView(root) {
  const [adapters, models] = await Promise.all([invoke("list_adapters"), invoke("list_models").catch(() => [])]);
  const importPath = h("input", { type: "text", id: "adapter-import-path", placeholder: "/path/to/adapter-folder or lora.gguf" });
  const importModel = h("select", { id: "adapter-import-model", "aria-label": "Base model to check against" },
    h("option", { value: "" }, "(base model: don't check)"), models.map((m) => h("option", { value: m.name }, m.name)));
  const importMsg = h("div", { "aria-live": "polite" });
  const importForm = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const done = await invoke("import_adapter", { path: importPath.value.trim(), model: importModel.value || null });
      root.replaceChildren();
      await adaptersView(root);
      if (done.warnings.length) root.prepend(h("div", { class: "warning", role: "status" }, done.warnings.join(" ")));
    } catch (err) {
      importMsg.replaceChildren(errorBox(describeError(err)));
    }
  } }, importPath, browseButton(importPath, { directory: true }, "Folder…"),
    browseButton(importPath, { filters: [{ name: "GGUF LoRA", extensions: ["gguf"] }] }, "GGUF file…"),
    importModel, h("button", { type: "submit", id: "import-adapter" }, "Import"));
  root.append(h("h1", {}, "Adapters"), h("h2", {}, "Import a shared adapter"),
    h("p", { class: "muted" }, "A PEFT folder (adapter_config.json + adapter_model.safetensors), an adapters-library folder, or a llama.cpp GGUF LoRA (choose its base model). With a base model chosen, the adapter is attached to it first: one made for another model is refused. Pickled .bin weights are refused because they can run code."),
    importForm, importMsg);
  if (!adapters.length) {
    root.append(h("p", { class: "empty" }, "No adapters yet. A finished run exports its adapter in its method's reference format (PEFT or the adapters library)."));
    return;
  }
  const errorArea = h("div", {});
  const act = (f) => async () => {
    try {
      await f();
      errorArea.replaceChildren();
    } catch (e) {
      errorArea.replaceChildren(errorBox(describeError(e)));
    }
  };
  const remove = (a) => act(async () => {
    if (!(await confirm(`Delete the ${a.method} adapter at ${a.path}? Folders inside the studio's data folder are removed; others are only forgotten.`))) return;
    await invoke("delete_adapter", { id: a.id });
    root.replaceChildren();
    await adaptersView(root);
  });
  root.append(errorArea, h("p", { class: "muted" }, "Export a run's adapter (or the merged model) from its run page; runs list their adapters there too."),
    h("table", { id: "adapters-table" },
    h("thead", {}, h("tr", {}, ["Method", "Base model", "Size", "Run", "Folder", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, adapters.map((a) => h("tr", { class: a.present ? "" : "missing" },
      h("td", {}, a.method), h("td", {}, a.base_model.split("/").pop()), h("td", {}, formatBytes(a.size_bytes)),
      h("td", {}, a.run_id ? h("a", { href: `#/runs/${a.run_id}` }, String(a.run_id)) : "–"),
      h("td", {}, h("code", {}, a.path), a.present ? "" : " (missing)"),
      h("td", { class: "row-actions" },
        a.present ? h("button", { type: "button", onclick: act(() => invoke("reveal_adapter", { id: a.id })) }, "Show folder") : null,
        h("button", { type: "button", class: "danger", "data-delete": a.id, onclick: remove(a) }, "Delete")))))));
}
