// The model library: installed models, import (folder or GGUF), download from the hub with
// a progress bar, and small models recommended for a first run.
import { invoke, channel, describeError, browseButton } from "../api.js";
import { h, errorBox } from "../dom.js";
import { formatBytes, formatCount } from "../metrics.js";

const RECOMMENDED = [
  ["HuggingFaceTB/SmolLM2-135M-Instruct", "135 M parameters: trains on a laptop CPU"],
  ["unsloth/gemma-3-270m-it", "Gemma 3 270M: Google's small model made for task fine-tunes"],
  ["HuggingFaceTB/SmolLM2-360M-Instruct", "360 M: better answers, still CPU-friendly"],
  ["Qwen/Qwen3-0.6B", "0.6 B, Qwen3"],
  ["Qwen/Qwen2.5-0.5B-Instruct", "0.5 B, multilingual"],
  ["TinyLlama/TinyLlama-1.1B-Chat-v1.0", "1.1 B, Llama architecture"],
];

export async function modelsView(root) {
  const list = h("div", { id: "models-list" });
  const errorArea = h("div", {});
  const progress = h("div", { class: "progress-line", id: "model-progress" });

  async function refresh() {
    const models = await invoke("list_models");
    list.replaceChildren(models.length ? h("table", { id: "models" },
      h("thead", {}, h("tr", {}, ["Name", "Family", "Parameters", "Context", "Size", "Source"].map((t) => h("th", {}, t)))),
      h("tbody", {}, models.map((m) => h("tr", {},
        h("td", {}, m.name), h("td", { title: m.architecture }, m.family || m.architecture), h("td", {}, formatCount(m.parameters)),
        h("td", {}, m.context_length.toLocaleString()), h("td", {}, formatBytes(m.size_bytes)), h("td", { class: "muted" }, m.source)))))
      : h("p", { class: "empty" }, "No models yet: import one below, or download a recommended one."));
  }

  // Runs an import or download, showing its progress; `busy` buttons are disabled meanwhile.
  async function withProgress(cmd, args, busy) {
    errorArea.replaceChildren();
    busy.forEach((b) => { b.disabled = true; });
    const bar = h("progress", { max: 1 });
    const label = h("span", { class: "muted" }, "starting…");
    progress.replaceChildren(bar, label);
    try {
      const ch = channel((p) => {
        if (p.total) { bar.max = p.total; bar.value = p.done; }
        label.textContent = `${p.stage} ${p.total ? `${formatBytes(p.done)} / ${formatBytes(p.total)}` : ""}`;
      });
      const m = await invoke(cmd, { ...args, onProgress: ch });
      progress.replaceChildren(h("p", { class: "ok", id: "model-installed" }, `Installed ${m.name} (${m.family || m.architecture}, ${formatCount(m.parameters)} parameters).`));
      await refresh();
    } catch (e) {
      progress.replaceChildren();
      errorArea.replaceChildren(errorBox(describeError(e)));
    }
    busy.forEach((b) => { b.disabled = false; });
  }

  const importPath = h("input", { type: "text", id: "import-path", placeholder: "/path/to/model-folder or model.gguf" });
  const importName = h("input", { type: "text", id: "import-name", placeholder: "name (optional)" });
  const importBtn = h("button", { type: "submit", class: "primary", id: "import-model" }, "Import");
  const repo = h("input", { type: "text", id: "download-repo", placeholder: "org/model, e.g. HuggingFaceTB/SmolLM2-135M-Instruct" });
  const downloadBtn = h("button", { type: "submit", id: "download-model" }, "Download");
  const busy = [importBtn, downloadBtn];
  root.append(h("h1", {}, "Models"), list, errorArea, progress,
    h("h2", {}, "Import"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); withProgress("import_model", { path: importPath.value.trim(), name: importName.value.trim() || null }, busy); } },
      importPath, browseButton(importPath, { directory: true }, "Folder…"),
      browseButton(importPath, { filters: [{ name: "GGUF", extensions: ["gguf"] }] }, "GGUF file…"), importName, importBtn),
    h("p", { class: "muted" }, "A Hugging Face folder (config.json, safetensors, tokenizer.json) is used in place; a GGUF file (llama, qwen2) is converted."),
    h("h2", {}, "Download from the hub"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); withProgress("download_model", { repo: repo.value.trim(), name: null }, busy); } }, repo, downloadBtn),
    h("ul", { class: "recommended" }, RECOMMENDED.map(([id, why]) => h("li", {},
      h("button", { type: "button", class: "link", onclick: () => { repo.value = id; repo.focus(); } }, id), ` — ${why}`))));
  await refresh();
}
