// The first screen: models, recent runs, and the way to a first run.
import { invoke, describeError } from "../api.js";
import { h, errorBox, statusBadge } from "../dom.js";
import { formatCount, formatBytes, formatLoss } from "../metrics.js";

export async function home(root) {
  const [models, runs] = await Promise.all([invoke("list_models"), invoke("list_runs")]).catch((e) => {
    root.append(errorBox(describeError(e)));
    return [[], []];
  });
  root.append(
    h("section", { class: "hero" },
      h("h1", {}, "Fine-tune a language model on this machine"),
      h("p", {}, runs.length
        ? "Start another run, or follow and compare the ones below."
        : "No runs yet. Train the demo: a small chat dataset on the installed model, a falling loss within minutes."),
      h("div", { class: "actions" },
        h("a", { class: "button primary", href: "#/new?demo=1", id: "train-demo" }, "Train the demo"),
        h("a", { class: "button", href: "#/new", id: "new-run" }, "New run"))),
  );
  root.append(h("h2", {}, "Installed models"));
  if (!models.length) {
    root.append(h("p", { class: "empty" }, "No models yet. ", h("a", { href: "#/models" }, "Import or download one"), " (SmolLM2-135M-Instruct trains on a laptop CPU)."));
  } else {
    root.append(h("table", { id: "models" },
      h("thead", {}, h("tr", {}, ["Name", "Family", "Parameters", "Context", "Size"].map((t) => h("th", {}, t)))),
      h("tbody", {}, models.map((m) => h("tr", {},
        h("td", {}, m.name), h("td", { title: m.architecture }, m.family || m.architecture), h("td", {}, formatCount(m.parameters)),
        h("td", {}, m.context_length.toLocaleString()), h("td", {}, formatBytes(m.size_bytes)))))));
  }
  if (runs.length) {
    root.append(h("h2", {}, "Recent runs"), h("table", { class: "runs" },
      h("tbody", {}, runs.slice(0, 5).map((r) => h("tr", {},
        h("td", {}, h("a", { href: `#/runs/${r.id}` }, `${r.id} ${r.name}`)),
        h("td", {}, statusBadge(r.status)),
        h("td", {}, `loss ${formatLoss(r.last_loss)}`))))));
  }
}
