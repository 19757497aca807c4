// One run, live: loss and validation loss, learning rate and gradient norm, progress, speed,
// ETA, memory. The curve comes from the catalog (history first), so a reloaded window or a
// restarted app shows all of it and keeps streaming.
import { invoke, channel, describeError, browseButton } from "../api.js";
import { h, errorBox, statusBadge } from "../dom.js";
import { renderChart, COLORS } from "../chart.js";
import { mergeRows, sortedRows, pointsOf, etaSeconds, formatDuration, formatBytes, formatLoss } from "../metrics.js";

export async function runView(root, id, isCurrent, onLeave) {
  const byStep = new Map();
  let detail = await invoke("get_run", { id });
  const title = h("h1", {}, `${detail.run.id} ${detail.run.name}`);
  const status = h("span", { id: "run-status" });
  const stats = h("dl", { class: "stats", id: "run-stats" });
  const progress = h("progress", { id: "run-progress", max: 1, value: 0 });
  const lossChart = h("div", { class: "chart-box", id: "loss-chart" });
  const lrChart = h("div", { class: "chart-box small", id: "lr-chart" });
  const gradChart = h("div", { class: "chart-box small", id: "grad-chart" });
  const errorArea = h("div", {});
  const cancel = h("button", { type: "button", id: "cancel-run", onclick: async () => { await act(() => invoke("cancel_run", { id })); } }, "Stop");
  const resume = h("button", { type: "button", id: "resume-run", onclick: async () => { await act(() => invoke("resume_run", { id, maxSteps: null })); follow(); } }, "Resume");
  const files = h("div", { class: "files" });
  const log = h("pre", { class: "log", id: "run-log" });
  // The export formats as the app lists them (the first is the default).
  const { exports } = await invoke("form_settings");
  const exportPath = (e) => `${detail.run.out_dir}/export-${e.format}${e.file ? ".gguf" : ""}`;
  const exportDest = h("input", { type: "text", id: "export-dest", value: exportPath(exports[0]) });
  const exportFormat = h("select", { id: "export-format", onchange: (e) => {
    exportDest.value = exportPath(exports.find((x) => x.format === e.target.value));
  } }, exports.map((e) => h("option", { value: e.format }, e.label)));
  const exportResult = h("div", { id: "export-result", "aria-live": "polite" });
  const exportBtn = h("button", { type: "submit", class: "primary", id: "export-run" }, "Export");
  const exportForm = h("form", { class: "export", onsubmit: async (e) => {
    e.preventDefault();
    exportBtn.disabled = true;
    exportResult.replaceChildren(h("p", {}, "Exporting…"));
    try {
      const path = await invoke("export_run", { id, format: exportFormat.value, dest: exportDest.value.trim() });
      exportResult.replaceChildren(h("p", { class: "ok", id: "export-done" }, `Exported to ${path}`));
      detail = await invoke("get_run", { id });
      draw();
    } catch (err) {
      exportResult.replaceChildren(errorBox(describeError(err)));
    }
    exportBtn.disabled = false;
  } }, h("div", { class: "row" }, exportFormat, exportDest, browseButton(exportDest, { directory: true }), exportBtn), exportResult);
  root.append(title, h("div", { class: "run-head" }, status, progress, cancel, resume), errorArea, stats,
    h("h2", {}, "Loss"), lossChart, h("div", { class: "two" }, h("div", {}, h("h3", {}, "Learning rate"), lrChart), h("div", {}, h("h3", {}, "Gradient norm"), gradChart)),
    h("h2", {}, "Export"), exportForm, files, h("h2", {}, "Log"), log);

  async function refreshLog() {
    const events = await invoke("run_log", { id, limit: 30 }).catch(() => []);
    log.textContent = events.map((e) => {
      const { event, ...rest } = e;
      return `${event}: ${Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ")}`;
    }).join("\n") || "(nothing logged yet)";
  }

  async function act(f) {
    try {
      await f();
      errorArea.replaceChildren();
    } catch (e) {
      errorArea.replaceChildren(errorBox(describeError(e)));
    }
  }

  function draw() {
    const rows = sortedRows(byStep);
    const run = detail.run;
    const last = rows[rows.length - 1];
    status.replaceChildren(statusBadge(run.status));
    cancel.hidden = !detail.can_stop;
    resume.hidden = !detail.can_resume;
    const total = run.total_steps || 0;
    if (total) {
      progress.max = total;
      progress.value = last ? Math.min(last.step, total) : 0;
    } else if (run.status === "completed") {
      progress.max = progress.value = 1;
    } else {
      progress.removeAttribute("value"); // indeterminate until the worker knows the step count
    }
    const speed = rows.filter((r) => r.tokens_per_s).slice(-1)[0];
    const items = [
      ["Step", last ? `${last.step}${total ? ` / ${total}` : ""}` : "–"],
      ["Loss", formatLoss(last?.loss)],
      ["Validation loss", formatLoss(rows.filter((r) => typeof r.eval_loss === "number").slice(-1)[0]?.eval_loss)],
      ["Tokens/s", speed ? Math.round(speed.tokens_per_s).toLocaleString() : "–"],
      ["ETA", run.status === "running" ? formatDuration(etaSeconds(rows, total)) : "–"],
      ["Peak memory", formatBytes(run.peak_memory_bytes)],
      ["Device", run.device],
    ];
    stats.replaceChildren(...items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-stat": k }, v)]));
    if (run.error) errorArea.replaceChildren(errorBox(run.error));
    const loss = pointsOf(rows, "loss").filter((p) => p.x > 0);
    lossChart.replaceChildren(renderChart([
      { label: "training loss", color: COLORS[0], points: loss },
      { label: "validation loss", color: COLORS[1], dashed: true, points: pointsOf(rows, "eval_loss") },
    ], { height: 280, empty: run.status === "queued" ? "Waiting for the device…" : "Waiting for the first step…" }));
    lossChart.dataset.points = String(loss.length);
    lrChart.replaceChildren(renderChart([{ label: "learning rate", color: COLORS[2], points: pointsOf(rows, "lr") }], { width: 360, height: 160 }));
    gradChart.replaceChildren(renderChart([{ label: "gradient norm", color: COLORS[3], points: pointsOf(rows, "grad_norm") }], { width: 360, height: 160 }));
    exportForm.hidden = !detail.checkpoints.length;
    files.replaceChildren(h("p", { class: "muted" }, `Folder: ${run.out_dir}`),
      detail.adapters.length ? h("ul", { id: "adapters" }, detail.adapters.map((a) => h("li", {}, `${a.method} adapter: ${a.path} (${formatBytes(a.size_bytes)})`))) : null);
  }

  let frame = 0;
  const redraw = () => { if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); }); };
  async function follow() {
    try {
      const ch = channel((rows) => {
        if (!isCurrent()) return;
        mergeRows(byStep, rows);
        // The first rows of a queued run mean it started: fetch its new status now.
        if (detail.run.status === "queued") invoke("get_run", { id }).then((d) => { detail = d; redraw(); }, () => {});
        redraw();
      });
      let ticks = 0;
      const poll = setInterval(async () => {
        if (!isCurrent()) return clearInterval(poll);
        detail = await invoke("get_run", { id }).catch(() => detail);
        if (ticks++ % 3 === 0) refreshLog();
        redraw();
      }, 1000);
      const token = `${id}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
      onLeave(() => invoke("unfollow_run", { token }).catch(() => {}));
      detail.run = await invoke("follow_run", { id, token, onRows: ch });
      clearInterval(poll);
      detail = await invoke("get_run", { id });
      if (isCurrent()) {
        draw();
        refreshLog();
      }
    } catch (e) {
      errorArea.replaceChildren(errorBox(describeError(e)));
    }
  }
  draw();
  follow();
}
