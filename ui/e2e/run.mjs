// End-to-end: drives a release build of the studio through tauri-driver (WebKitWebDriver)
// the way a person would, saving a screenshot of every screen. Run by tests/desktop/run.sh,
// which prepares a studio home with a small model and starts the driver.
//   APP=/abs/peft-studio WEBDRIVER=http://127.0.0.1:4444 SHOTS=dir BROKEN=file node e2e/run.mjs

import { mkdirSync, readFileSync, writeFileSync, readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { Session, sleep } from "./webdriver.mjs";

const { APP, WEBDRIVER = "http://127.0.0.1:4444", SHOTS = "screenshots", BROKEN, EXPORTS, MODEL_DIR, OUTSIDE_DATASET, DATASET } = process.env;
mkdirSync(SHOTS, { recursive: true });
const results = [];

async function step(name, f) {
  const t0 = Date.now();
  try {
    await f();
    results.push({ name, ok: true, ms: Date.now() - t0 });
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push({ name, ok: false, error: e.message });
    console.log(`FAIL ${name}: ${e.message}`);
    await shot(`failed-${name.replace(/\W+/g, "-")}`).catch(() => {});
    throw e;
  }
}

let s;
async function shot(name) {
  writeFileSync(join(SHOTS, `${name}.png`), await s.screenshot());
}

const go = (hash) => s.exec("location.hash = arguments[0]", hash);
// Read in one script: the run view redraws these elements several times a second, so a
// found element may be stale by the time it is read.
const points = async () => Number(await s.exec("return document.querySelector('#loss-chart')?.dataset.points || 0"));
const statusOf = () => s.exec("return document.querySelector('#run-status [data-status]')?.dataset.status || ''");

// Answers the studio's native dialog titled `title` as a person would with the keyboard:
// Ctrl+L, the path, Enter (xdotool, on the same X display as the app).
async function chooseInNativeDialog(title, path) {
  const x = (...args) => execFileSync("xdotool", args, { encoding: "utf8", timeout: 20000 }).trim();
  const win = x("search", "--sync", "--onlyvisible", "--name", `^${title}$`).split("\n")[0];
  x("windowfocus", "--sync", win);
  await sleep(500);
  x("key", "--window", win, "ctrl+l");
  await sleep(300);
  x("type", "--window", win, "--delay", "20", path);
  await sleep(300);
  x("key", "--window", win, "Return");
  const open = () => { try { return x("search", "--onlyvisible", "--name", `^${title}$`) !== ""; } catch { return false; } };
  await s.waitFor(async () => !open(), 20000, `the "${title}" dialog to close`);
  // The form gets the pick when choose_path answers, just after the dialog closes.
  await sleep(500);
}

// Safetensors keys from the file's JSON header.
function safetensorsKeys(path) {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  return Object.keys(JSON.parse(buf.subarray(8, 8 + n).toString("utf8"))).filter((k) => k !== "__metadata__");
}

// Trains the demo by clicks from the first screen: returns the run id.
async function trainDemo({ epochs, lr, quantize, evalData }) {
  await go("#/");
  await (await s.find("#train-demo")).click();
  await s.find("#model-choices input:checked");
  await shot("new-run-1-model");
  await (await s.find("#step-next")).click();
  await s.find("#dataset-summary");
  await shot("new-run-2-dataset");
  await (await s.find("#step-next")).click();
  await s.find("#trainable strong");
  await s.find("#memory");
  await shot("new-run-3-method");
  await (await s.find("#step-next")).click();
  await (await s.find("input[name=epochs]")).type(String(epochs));
  await (await s.find("input[name=lr]")).type(String(lr));
  if (quantize) {
    // The base held quantized: the select under Advanced.
    await (await s.find(".new-run details summary")).click();
    await (await s.find(`select[name=quantize] option[value=${quantize}]`)).click();
  }
  await shot("new-run-4-hyperparameters");
  await (await s.find("#step-next")).click();
  await s.find("#review");
  if (evalData) {
    // Measured when the run ends: perplexity on a held-out file.
    await (await s.find("#eval-at-end option[value=perplexity]")).click();
    await (await s.find("#eval-at-end-data")).type(evalData);
  }
  await shot("new-run-5-review");
  await (await s.find("#start-run")).click();
  const hash = await s.waitFor(async () => {
    const h = await s.exec("return location.hash");
    return /^#\/runs\/\d+$/.test(h) && h;
  }, 20000, "the run view");
  return Number(hash.split("/").pop());
}

try {
  const started = Date.now();
  s = await Session.start(WEBDRIVER, APP);
  await s.find("#train-demo");
  console.log(`cold start to an interactive window: ${Date.now() - started} ms (includes the WebDriver session)`);
  await shot("home");

  let first;
  await step("(a) train the demo by clicks and watch the live chart", async () => {
    first = await trainDemo({ epochs: 40, lr: 0.002 });
    const p1 = await s.waitFor(async () => (await points()) >= 2 && points(), 120000, "two training steps on the chart");
    await s.waitFor(async () => (await points()) > p1, 60000, "the chart to grow while training");
    await shot("run-live");
  });

  await step("(c) reload the window during the run: the curve is back and keeps growing", async () => {
    const live = await statusOf();
    if (live !== "running" && live !== "queued") throw new Error(`the run is ${live} before the reload; make it longer`);
    const before = await points();
    await s.refresh();
    await s.waitFor(async () => (await points()) >= before, 30000, "the history after the reload");
    const after = await points();
    await s.waitFor(async () => (await points()) > after, 60000, "new steps after the reload");
    await shot("run-after-reload");
  });

  await step("(a) the run completes; exported, its adapter is on disk with PEFT's keys", async () => {
    await s.waitFor(async () => (await statusOf()) === "completed", 600000, "the run to complete");
    await s.find("#adapters li");
    const dest = join(EXPORTS, "first-adapter");
    await (await s.find("#export-dest")).type(dest);
    await (await s.find("#export-run")).click();
    await s.find("#export-done", { timeout: 60000 });
    const file = join(dest, "adapter_model.safetensors");
    if (!existsSync(join(dest, "adapter_config.json"))) throw new Error(`no adapter_config.json in ${dest}`);
    const keys = safetensorsKeys(file);
    if (!keys.some((k) => /^base_model\.model\..*\.lora_A\.weight$/.test(k))) throw new Error(`unexpected keys in ${file}: ${keys.slice(0, 4)}`);
    console.log(`     ${file}: ${keys.length} tensors, e.g. ${keys[0]}`);
    await shot("run-completed");
  });

  await step("(b) compare two runs", async () => {
    // The second run trains on a base held in Q8_0.
    const second = await trainDemo({ epochs: 2, lr: 0.005, quantize: "q8_0", evalData: DATASET });
    await s.waitFor(async () => (await statusOf()) === "completed", 600000, "the second run to complete");
    await go("#/runs");
    await (await s.find(`input[type=checkbox][data-run="${first}"]`)).click();
    await (await s.find(`input[type=checkbox][data-run="${second}"]`)).click();
    await shot("runs");
    await (await s.find("#compare-selected")).click();
    await s.waitFor(async () => (await s.findAll("#compare-chart path")).length >= 2, 20000, "two curves");
    const diff = await (await s.find("#config-diff")).text();
    if (!/train\.lr/.test(diff) || !/train\.epochs/.test(diff) || !/train\.quantize/.test(diff)) throw new Error(`config diff lacks lr/epochs/quantize: ${diff}`);
    // The second run's evaluation at its end is listed with it.
    const evals = await (await s.find("#compare-evals")).text();
    if (!/perplexity/.test(evals)) throw new Error(`no evaluation of the second run: ${evals}`);
    await (await s.find("#compare-log")).click();
    await shot("compare");
    const png = join(EXPORTS, "compare.png");
    await (await s.find("#compare-dest")).type(png);
    await (await s.find("#compare-save")).click();
    await s.waitFor(async () => /saved/.test(await (await s.find("#compare-saved")).text()), 30000, "the chart to be saved");
    if (readFileSync(png).subarray(1, 4).toString() !== "PNG") throw new Error(`${png} is not a PNG`);
  });

  await step("(d) a broken dataset shows its line-numbered problems", async () => {
    await go("#/datasets");
    await (await s.find("#inspect-path")).type(BROKEN);
    await (await s.find("#inspect")).click();
    await s.find("#dataset-problems");
    const lines = await Promise.all((await s.findAll("#dataset-problems td.line")).map((e) => e.text()));
    if (lines.join(",") !== "2,3,4") throw new Error(`expected problems on lines 2, 3 and 4, got ${lines}`);
    await shot("dataset-problems");
  });

  await step("a model imported through the Models screen", async () => {
    await go("#/models");
    await (await s.find("#import-path")).type(MODEL_DIR);
    await (await s.find("#import-name")).type("tiny-imported");
    await (await s.find("#import-model")).click();
    await s.find("#model-installed", { timeout: 60000 });
    const names = await Promise.all((await s.findAll("#models tbody td:first-child")).map((e) => e.text()));
    if (!names.includes("tiny-imported")) throw new Error(`not listed: ${names}`);
    await shot("models");
  });

  await step("(e) the playground: base and adapter side by side give different outputs", async () => {
    await go("#/playground");
    await (await s.find("#pg-generate")).click();
    await s.waitFor(async () => (await s.findAll('.pg-output[data-done="1"]')).length >= 2, 120000, "two finished generations");
    const [base, tuned] = await Promise.all((await s.findAll(".pg-output")).slice(0, 2).map((e) => e.text()));
    console.log(`     base: ${JSON.stringify(base.slice(0, 40))} adapter: ${JSON.stringify(tuned.slice(0, 40))}`);
    if (base === tuned) throw new Error("the adapter did not change the output");
    await shot("playground");
    await go("#/adapters");
    await s.find("#adapters-table");
    const before = (await s.findAll("#adapters-table tbody tr")).length;
    await (await s.find("#adapter-import-path")).type(join(EXPORTS, "first-adapter"));
    await (await s.find("#import-adapter")).click();
    await s.waitFor(async () => (await s.findAll("#adapters-table tbody tr")).length === before + 1, 20000, "the imported adapter listed");
    await shot("adapters");
  });

  await step("(f) evaluate the base and two adapters: a table and a bar chart", async () => {
    await go("#/evaluate");
    await (await s.find("#eval-data")).type(DATASET);
    await (await s.find("#eval-run")).click();
    await s.waitFor(async () => (await s.findAll("#eval-table tbody tr")).length >= 3, 180000, "three evaluated targets");
    const bars = (await s.findAll("#eval-chart g.bar")).length;
    if (bars < 3) throw new Error(`${bars} bars for three targets`);
    const text = await (await s.find("#eval-table")).text();
    if (!/perplexity/.test(text)) throw new Error(`no perplexity column: ${text.slice(0, 80)}`);
    await shot("evaluate");
  });

  await step("(g) serve the base and an adapter; an HTTP client gets an answer from the adapter", async () => {
    await go("#/serve");
    await (await s.find("#serve-port")).type("0");
    await (await s.find(".serve-pick")).click();
    const name = await s.exec("return document.querySelector('.serve-name').value");
    await (await s.find("#serve-start")).click();
    const url = await s.waitFor(async () => s.exec("return document.querySelector('#serve-url')?.textContent || ''"), 60000, "the server's address");
    const models = await (await fetch(`${url}/models`)).json();
    const ids = models.data.map((m) => m.id);
    if (!ids.includes(name)) throw new Error(`${name} not served: ${ids}`);
    const answer = await fetch(`${url}/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: name, messages: [{ role: "user", content: "hello" }], max_tokens: 8, temperature: 0 }),
    });
    const body = await answer.json();
    if (answer.status !== 200 || !body.choices?.[0]?.message) throw new Error(`answer ${answer.status}: ${JSON.stringify(body).slice(0, 200)}`);
    await s.waitFor(async () => (await s.findAll("#serve-log tr")).length >= 1, 10000, "the request in the log");
    await shot("serve");
    await (await s.find("#serve-stop")).click();
    await s.waitFor(async () => !(await s.exec("return document.querySelector('#serve-url')?.textContent || ''")), 20000, "the server to stop");
  });

  await step("a typed path the user never chose is refused; picked in the native dialog, it is read", async () => {
    await go("#/datasets");
    await (await s.find("#inspect-path")).type(OUTSIDE_DATASET);
    await (await s.find("#inspect")).click();
    await s.waitFor(async () => /not chosen/.test(await s.exec("return document.querySelector('.error')?.textContent || ''")), 20000, "the refusal");
    await shot("dataset-not-chosen");
    // Browse… opens the studio's own GTK dialog at the typed path; the "user" confirms it there.
    await (await s.find("#inspect-path + button")).click();
    await chooseInNativeDialog("Open File", OUTSIDE_DATASET);
    await (await s.find("#inspect")).click();
    await s.find("#dataset-summary");
    await shot("dataset-chosen");
  });
} catch (e) {
  process.exitCode = 1;
} finally {
  if (s) await s.close().catch(() => {});
  const failed = results.filter((r) => !r.ok).length;
  console.log(`e2e steps=${results.length} failed=${failed} screenshots=${readdirSync(SHOTS).length}`);
  if (failed) process.exitCode = 1;
}
