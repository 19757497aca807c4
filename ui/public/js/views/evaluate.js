// Evaluate: a base model alone and with adapters on a held-out file — perplexity, generation
// metrics against references, or multiple-choice accuracy — as a table and a bar chart; every
// result is kept in the catalog (and shown by Compare for runs).
import { invoke, channel, describeError, browseButton } from "../api.js";
import { h, errorBox } from "../dom.js";
import { renderBars } from "../chart.js";

const TASKS = {
  perplexity: { label: "perplexity (lower is better)", main: "perplexity" },
  generation: { label: "generation: exact match, F1, ROUGE-L, BLEU", main: "f1" },
  choice: { label: "multiple choice: accuracy", main: "acc" },
};

export async function evaluateView(root) {
  const [models, adapters] = await Promise.all([invoke("list_models"), invoke("list_adapters")]);
  const usable = adapters.filter((a) => a.present);
  const model = h("select", { id: "eval-model" }, models.map((m) => h("option", { value: m.name }, m.name)));
  const base = h("input", { type: "checkbox", id: "eval-base", checked: true });
  const picks = usable.map((a, i) => ({ a, box: h("input", { type: "checkbox", class: "eval-pick", "data-id": a.id, checked: i >= usable.length - 2 }) }));
  const task = h("select", { id: "eval-task" }, Object.entries(TASKS).map(([k, t]) => h("option", { value: k }, t.label)));
  const data = h("input", { type: "text", id: "eval-data", placeholder: "/path/to/heldout.jsonl" });
  const format = h("select", { id: "eval-format" }, ["auto", "text", "prompt-completion", "alpaca", "messages", "sharegpt"].map((f) => h("option", { value: f }, f)));
  const maxNew = h("input", { type: "number", id: "eval-max-new", value: 64, min: 1 });
  const progress = h("progress", { id: "eval-progress", value: 0, max: 1 });
  const progressText = h("span", { class: "muted", id: "eval-progress-text" });
  const errorArea = h("div", {});
  const results = h("div", { id: "eval-results" });
  const runBtn = h("button", { type: "submit", class: "primary", id: "eval-run" }, "Evaluate");

  function show(rows) {
    const names = Object.keys(rows[0]?.evaluation.metrics ?? {});
    const metric = h("select", { id: "eval-metric" }, names.map((n) => h("option", { value: n, selected: n === TASKS[task.value].main }, n)));
    const chart = h("div", { class: "chart-box", id: "eval-chart" });
    const draw = () => chart.replaceChildren(renderBars(rows.map((r) => ({ label: r.label, value: r.evaluation.metrics[metric.value] })), { title: metric.value }));
    metric.addEventListener("change", draw);
    results.replaceChildren(
      h("table", { class: "diff", id: "eval-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "target"), names.map((n) => h("th", {}, n)), h("th", {}, "items"))),
        h("tbody", {}, rows.map((r) => h("tr", { "data-label": r.label }, h("td", {}, r.label),
          names.map((n) => h("td", {}, Number(r.evaluation.metrics[n]).toPrecision(5))), h("td", {}, String(r.evaluation.items)))))),
      h("label", {}, "chart ", metric), chart);
    draw();
  }

  async function run(e) {
    e.preventDefault();
    errorArea.replaceChildren();
    runBtn.disabled = true;
    progress.value = 0;
    try {
      const form = {
        model: model.value,
        base: base.checked,
        adapters: picks.filter((p) => p.box.checked).map((p) => p.a.id),
        task: task.value,
        data: data.value.trim(),
        format: format.value,
        max_new_tokens: Number(maxNew.value),
      };
      const onProgress = channel((p) => {
        progress.max = p.total;
        progress.value = p.done;
        progressText.textContent = `${p.label}: ${p.done}/${p.total}`;
      });
      show(await invoke("eval_run", { form, onProgress }));
      progressText.textContent = "done";
    } catch (err) {
      errorArea.replaceChildren(errorBox(describeError(err)));
    }
    runBtn.disabled = false;
  }

  root.append(...[h("h1", {}, "Evaluate"),
    models.length ? null : errorBox("No models are installed yet."),
    h("form", { onsubmit: run, id: "eval-form" },
      h("div", { class: "row" }, h("label", {}, "Base model ", model), h("label", {}, base, " the base alone")),
      h("fieldset", {}, h("legend", {}, "Adapters"),
        picks.length ? picks.map((p) => h("label", { class: "row" }, p.box, ` run ${p.a.run_id ?? "–"} · ${p.a.method} · ${p.a.path.split("/").slice(-2).join("/")}`))
          : h("p", { class: "empty" }, "No adapters yet.")),
      h("div", { class: "row" }, h("label", {}, "Task ", task), h("label", {}, "records ", format), h("label", {}, "max new tokens ", maxNew)),
      h("div", { class: "row" }, h("label", {}, "File ", data), browseButton(data, { filters: [{ name: "Data", extensions: ["jsonl", "json", "csv", "tsv", "txt"] }] })),
      h("div", { class: "actions" }, runBtn, progress, progressText)),
    errorArea, results].filter(Boolean));
}
