// Every run; tick two or more to compare them.
import { invoke } from "../api.js";
import { h, statusBadge } from "../dom.js";
import { formatLoss } from "../metrics.js";

export async function runsList(root) {
  const runs = await invoke("list_runs");
  const picked = new Set();
  const compare = h("button", { type: "button", class: "primary", id: "compare-selected", disabled: true,
    onclick: () => { location.hash = `#/compare?ids=${[...picked].join(",")}`; } }, "Compare selected");
  const when = (t) => new Date(t * 1000).toLocaleString();
  root.append(h("h1", {}, "Runs"), h("div", { class: "actions" }, compare, h("a", { class: "button", href: "#/new" }, "New run")));
  if (!runs.length) {
    root.append(h("p", { class: "empty" }, "No runs yet. ", h("a", { href: "#/new?demo=1" }, "Train the demo"), " to see one here."));
    return;
  }
  root.append(h("table", { class: "runs", id: "runs-table" },
    h("thead", {}, h("tr", {}, ["", "Run", "Method", "Status", "Step", "Loss", "Validation", "Created"].map((t) => h("th", {}, t)))),
    h("tbody", {}, runs.map((r) => h("tr", { "data-run": r.id },
      h("td", {}, h("input", { type: "checkbox", "aria-label": `select run ${r.id}`, "data-run": r.id,
        onchange: (e) => { e.target.checked ? picked.add(r.id) : picked.delete(r.id); compare.disabled = picked.size < 2; } })),
      h("td", {}, h("a", { href: `#/runs/${r.id}` }, `${r.id} ${r.name}`)),
      h("td", {}, r.method), h("td", {}, statusBadge(r.status)), h("td", {}, String(r.last_step ?? 0)),
      h("td", {}, formatLoss(r.last_loss)), h("td", {}, formatLoss(r.best_eval_loss)), h("td", {}, when(r.created_at)))))));
}
