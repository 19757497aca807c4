// Adapters the runs produced, with where they are and what they need.
import { invoke } from "../api.js";
import { h } from "../dom.js";
import { formatBytes } from "../metrics.js";

export async function adaptersView(root) {
  const adapters = await invoke("list_adapters");
  root.append(h("h1", {}, "Adapters"));
  if (!adapters.length) {
    root.append(h("p", { class: "empty" }, "No adapters yet. A finished run exports its adapter in its method's reference format (PEFT or the adapters library)."));
    return;
  }
  root.append(h("table", { id: "adapters-table" },
    h("thead", {}, h("tr", {}, ["Method", "Base model", "Size", "Run", "Folder"].map((t) => h("th", {}, t)))),
    h("tbody", {}, adapters.map((a) => h("tr", { class: a.present ? "" : "missing" },
      h("td", {}, a.method), h("td", {}, a.base_model.split("/").pop()), h("td", {}, formatBytes(a.size_bytes)),
      h("td", {}, a.run_id ? h("a", { href: `#/runs/${a.run_id}` }, String(a.run_id)) : "–"),
      h("td", {}, h("code", {}, a.path), a.present ? "" : " (missing)"))))));
}
