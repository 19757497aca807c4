// Runs on one chart: x axis, smoothing, log scale, series shown or hidden, the config
// fields that differ, and the chart saved as SVG.
import { invoke, describeError, browseButton } from "../api.js";
import { h, errorBox } from "../dom.js";
import { renderChart, COLORS } from "../chart.js";
import { formatLoss } from "../metrics.js";

export async function compareView(root, params) {
  const ids = (params.get("ids") || "").split(",").map(Number).filter((n) => Number.isInteger(n) && n > 0);
  const opts = { x: "step", smoothing: 0, logY: false, hidden: new Set() };
  const chart = h("div", { class: "chart-box", id: "compare-chart" });
  const legend = h("div", { class: "legend", id: "compare-legend" });
  const diff = h("div", { id: "config-diff" });
  const evals = h("div", { id: "compare-evaluations" });
  const errorArea = h("div", {});
  const xSel = h("select", { id: "compare-x", onchange: (e) => { opts.x = e.target.value; load(); } },
    ["step", "epoch", "tokens", "time"].map((x) => h("option", { value: x }, x)));
  const smooth = h("input", { type: "range", id: "compare-smoothing", min: 0, max: 0.95, step: 0.05, value: 0, oninput: (e) => { opts.smoothing = Number(e.target.value); load(); } });
  const logY = h("input", { type: "checkbox", id: "compare-log", onchange: (e) => { opts.logY = e.target.checked; draw(); } });
  const dest = h("input", { type: "text", id: "compare-dest", placeholder: "/path/to/chart.png or .svg" });
  const saved = h("span", { class: "muted", id: "compare-saved" });
  const save = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const path = await invoke("save_compare_chart", { ids, x: opts.x, smoothing: opts.smoothing, logY: opts.logY, dest: dest.value.trim() });
      saved.textContent = `saved ${path}`;
      errorArea.replaceChildren();
    } catch (err) {
      errorArea.replaceChildren(errorBox(describeError(err)));
    }
  } }, dest, browseButton(dest, { save: true, filters: [{ name: "Chart", extensions: ["png", "svg"] }] }), h("button", { type: "submit", id: "compare-save" }, "Save chart"), saved);
  root.append(h("h1", {}, "Compare runs"),
    h("div", { class: "toolbar" }, h("label", {}, "x axis ", xSel), h("label", {}, "smoothing ", smooth), h("label", {}, logY, " log scale")),
    errorArea, chart, legend, save, h("h2", {}, "Config fields that differ"), diff, evals);
  let data = null;

  function seriesList() {
    return data.series.flatMap((s, i) => [
      { key: `${s.run_id}:loss`, label: `${s.label}`, color: COLORS[i % COLORS.length], points: s.loss.filter((p) => p.x > 0 || opts.x !== "step").map((p) => ({ x: p.x, y: p.y })) },
      { key: `${s.run_id}:eval`, label: `${s.label} (validation)`, color: COLORS[i % COLORS.length], dashed: true, points: s.eval_loss.map((p) => ({ x: p.x, y: p.y })) },
    ]);
  }

  function draw() {
    const all = seriesList();
    const svg = renderChart(all.filter((s) => !opts.hidden.has(s.key)), { height: 360, logY: opts.logY, xTitle: opts.x });
    chart.replaceChildren(svg);
    legend.replaceChildren(...all.map((s) => h("label", { class: "legend-item" },
      h("input", { type: "checkbox", checked: !opts.hidden.has(s.key), onchange: (e) => { e.target.checked ? opts.hidden.delete(s.key) : opts.hidden.add(s.key); draw(); } }),
      h("span", { class: "swatch" + (s.dashed ? " dashed" : ""), style: { borderColor: s.color } }), s.label)));
  }

  async function load() {
    try {
      data = await invoke("compare_runs", { ids, x: opts.x, smoothing: opts.smoothing, maxPoints: 1000 });
      errorArea.replaceChildren();
      draw();
      const entries = Object.entries(data.config_diff);
      diff.replaceChildren(entries.length ? h("table", { class: "diff" },
        h("thead", {}, h("tr", {}, h("th", {}, "field"), data.runs.map((r) => h("th", {}, `${r.id} ${r.name}`)))),
        h("tbody", {}, entries.map(([k, vals]) => h("tr", {}, h("td", {}, k), vals.map((v) => h("td", {}, v === null ? "–" : JSON.stringify(v))))),
          h("tr", { class: "final" }, h("td", {}, "final loss"), data.runs.map((r) => h("td", {}, formatLoss(r.last_loss))))))
        : h("p", {}, "The configs are identical."));
      evals.replaceChildren(...(data.evaluations.length ? [h("h2", {}, "Evaluations"), h("table", { class: "diff", id: "compare-evals" },
        h("thead", {}, h("tr", {}, ["run", "task", "metrics", "items", "file"].map((t) => h("th", {}, t)))),
        h("tbody", {}, data.evaluations.map((e) => h("tr", {}, h("td", {}, String(e.run_id)), h("td", {}, e.task),
          h("td", {}, Object.entries(e.metrics).filter(([k]) => k !== "tokens").map(([k, v]) => `${k} ${Number(v).toPrecision(4)}`).join("  ")),
          h("td", {}, String(e.items)), h("td", {}, e.dataset.split("/").pop())))))] : []));
    } catch (e) {
      errorArea.replaceChildren(errorBox(describeError(e)));
    }
  }
  if (ids.length < 1) {
    root.append(errorBox("Pick runs to compare on the Runs screen."));
    return;
  }
  load();
}
