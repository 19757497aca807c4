// Checking a dataset: its problems with line numbers, a preview with the trained text
// highlighted, and a histogram of token lengths.
import { invoke, describeError, browseButton } from "../api.js";
import { h, errorBox } from "../dom.js";

// A choice of the record formats the reader knows (as the app lists them; "auto" decides per
// record).
export function formatSelect(id, formats, value, onchange) {
  return h("select", { id, "aria-label": "record format", onchange: (e) => onchange(e.target.value) },
    formats.map((f) => h("option", { value: f, selected: f === value }, f === "auto" ? "format: detect" : `format: ${f}`)));
}

export function datasetReport(view) {
  const problems = view.report.problems;
  return h("div", { class: "report" },
    h("p", { class: problems.length ? "warn" : "ok", id: "dataset-summary" }, view.summary),
    problems.length ? h("table", { class: "problems", id: "dataset-problems" },
      h("thead", {}, h("tr", {}, h("th", {}, "Line"), h("th", {}, "Problem"))),
      h("tbody", {}, problems.slice(0, 200).map((p) => h("tr", {}, h("td", { class: "line" }, String(p.line)), h("td", {}, p.message))))) : null,
    view.tokens ? h("p", {}, `${view.tokens.examples} records, ${view.tokens.total_tokens.toLocaleString()} tokens (${view.tokens.trained_tokens.toLocaleString()} trained); length median ${view.tokens.median}, p95 ${view.tokens.p95}, max ${view.tokens.max}`) : null,
    view.lengths.length ? histogram(view.lengths) : null,
    view.preview.length ? h("div", { class: "preview" }, h("h3", {}, "How the model sees it (trained text highlighted)"), view.preview.map(previewRecord)) : null);
}

function previewRecord(r) {
  const parts = [];
  let at = 0;
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  const bytes = enc.encode(r.text);
  for (const [s, e] of r.trained) {
    if (s > at) parts.push(dec.decode(bytes.slice(at, s)));
    parts.push(h("mark", {}, dec.decode(bytes.slice(s, e))));
    at = e;
  }
  if (at < bytes.length) parts.push(dec.decode(bytes.slice(at)));
  return h("figure", {}, h("figcaption", {}, `line ${r.line}`), h("pre", {}, parts));
}

// Token lengths in 20 bins as an SVG bar chart.
export function bins(lengths, count = 20) {
  const max = Math.max(...lengths, 1);
  const width = Math.max(1, Math.ceil(max / count));
  const out = Array.from({ length: Math.ceil((max + 1) / width) }, (_, i) => ({ from: i * width, to: (i + 1) * width - 1, n: 0 }));
  for (const l of lengths) out[Math.floor(l / width)].n++;
  return out;
}

function histogram(lengths) {
  const b = bins(lengths);
  const top = Math.max(...b.map((x) => x.n), 1);
  const W = 480, H = 120, bw = W / b.length;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 16}`);
  svg.setAttribute("class", "histogram");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "token length histogram");
  b.forEach((x, i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect");
    const hgt = (x.n / top) * H;
    Object.entries({ x: i * bw + 1, y: H - hgt, width: bw - 2, height: hgt }).forEach(([k, v]) => r.setAttribute(k, v));
    const t = document.createElementNS(svg.namespaceURI, "title");
    t.textContent = `${x.from}–${x.to} tokens: ${x.n}`;
    r.append(t);
    svg.append(r);
  });
  const label = document.createElementNS(svg.namespaceURI, "text");
  label.setAttribute("x", W / 2);
  label.setAttribute("y", H + 14);
  label.setAttribute("text-anchor", "middle");
  label.textContent = `tokens per record (0 – ${Math.max(...lengths)})`;
  svg.append(label);
  return h("figure", { class: "hist" }, svg);
}

// A file dropped on the window goes to the dataset screen when it is open (one listener for
// the page's life; the screen sets where the path goes).
let onDrop = null;
if (typeof window !== "undefined") {
  window.__TAURI__?.event?.listen("tauri://drag-drop", (e) => {
    const [first] = e.payload?.paths || [];
    if (first && onDrop) onDrop(first);
  });
}

export async function datasets(root) {
  const [models, settings] = await Promise.all([invoke("list_models").catch(() => []), invoke("form_settings")]);
  const out = h("div", {});
  const path = h("input", { type: "text", id: "inspect-path", placeholder: "/path/to/data.jsonl" });
  const model = h("select", { id: "inspect-model" }, h("option", { value: "" }, "(no tokenizer)"), models.map((m) => h("option", { value: m.name }, m.name)));
  let format = "auto";
  const formatPick = formatSelect("inspect-format", settings.formats, format, (f) => { format = f; });
  const run = async (e) => {
    e.preventDefault();
    out.replaceChildren(h("p", {}, "Reading…"));
    try {
      out.replaceChildren(datasetReport(await invoke("inspect_dataset", { path: path.value.trim(), model: model.value || null, format })));
    } catch (err) {
      out.replaceChildren(errorBox(describeError(err)));
    }
  };
  onDrop = (file) => {
    if (!document.body.contains(path)) return;
    path.value = file;
    run(new Event("submit"));
  };
  root.append(h("h1", {}, "Check a dataset"), h("p", { class: "muted" }, "Type a path or drop a file on the window."),
    h("form", { class: "row", onsubmit: run }, path, browseButton(path, { filters: [{ name: "Datasets", extensions: ["jsonl", "json", "csv", "tsv", "parquet", "txt"] }] }), model, formatPick, h("button", { type: "submit", class: "primary", id: "inspect" }, "Check")), out);
}
