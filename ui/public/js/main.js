// The router: the URL's hash names the screen (#/runs/3), so a reload comes back to it.
import { available, invoke, describeError } from "./api.js";
import { h, errorBox } from "./dom.js";
import { home } from "./views/home.js";
import { newRun } from "./views/newrun.js";
import { runsList } from "./views/runs.js";
import { runView } from "./views/run.js";
import { compareView } from "./views/compare.js";
import { datasets } from "./views/datasets.js";
import { playground } from "./views/playground.js";
import { adaptersView } from "./views/adapters.js";
import { modelsView } from "./views/models.js";
import { serveView } from "./views/serve.js";
import { evaluateView } from "./views/evaluate.js";

const main = document.getElementById("main");
let generation = 0;
// What the screen being left must undo (e.g. stop following a run).
let cleanups = [];
const onLeave = (f) => cleanups.push(f);

async function route() {
  const mine = ++generation;
  const isCurrent = () => mine === generation;
  cleanups.forEach((f) => f());
  cleanups = [];
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const root = h("div", { class: "screen", "data-screen": path.split("/")[1] || "home" });
  main.replaceChildren(root);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === `#${path}`);
  if (!available()) {
    root.append(errorBox("The studio's backend is not reachable: open PEFT Studio, not this page in a browser."));
    return;
  }
  try {
    const run = path.match(/^\/runs\/(\d+)$/);
    if (run) await runView(root, Number(run[1]), isCurrent, onLeave);
    else if (path === "/new") await newRun(root, params);
    else if (path === "/runs") await runsList(root);
    else if (path === "/compare") await compareView(root, params);
    else if (path === "/datasets") await datasets(root);
    else if (path === "/playground") await playground(root);
    else if (path === "/adapters") await adaptersView(root);
    else if (path === "/models") await modelsView(root);
    else if (path === "/serve") await serveView(root, onLeave);
    else if (path === "/evaluate") await evaluateView(root);
    else await home(root);
  } catch (e) {
    root.append(errorBox(describeError(e)));
  }
}

window.addEventListener("hashchange", route);
route();
if (available()) {
  invoke("app_info").then((info) => {
    document.getElementById("version").textContent = `${info.name} ${info.version}`;
  });
}
