// New run: a stepper (model → dataset → method → hyperparameters → review).
import { invoke, describeError, browseButton } from "../api.js";
import { h, errorBox } from "../dom.js";
import { PRESETS, fitVerdict, formatBytes, formatCount } from "../metrics.js";
import { methodConfig, defaultValues } from "../form.js";
import { datasetReport, formatSelect } from "./datasets.js";

const STEPS = ["Model", "Dataset", "Method", "Hyperparameters", "Review"];

export async function newRun(root, params) {
  const [models, methods, quantizations] = await Promise.all([invoke("list_models"), invoke("list_methods"), invoke("list_quantizations")]);
  const state = {
    step: 0,
    model: models[0]?.name || "",
    dataset: "",
    format: "auto",
    kind: "lora",
    values: Object.fromEntries(methods.map((m) => [m.kind, defaultValues(m)])),
    preset: "quick",
    train: { ...PRESETS.quick.train, val_fraction: 0.2 },
    name: "",
  };
  if (params.get("demo")) {
    const demo = await invoke("demo_setup");
    if (demo.model) state.model = demo.model;
    state.dataset = demo.dataset;
    state.train = { ...state.train, ...demo.train };
    state.values.lora = { ...state.values.lora, r: 8, lora_alpha: 16, target_modules: "q_proj, k_proj, v_proj, o_proj" };
    state.name = "demo";
  }
  const infoOf = (kind) => methods.find((m) => m.kind === kind);
  const body = h("div", { class: "step-body" });
  const nav = h("ol", { class: "stepper" });
  const message = h("div", { class: "step-message", "aria-live": "polite" });
  const back = h("button", { type: "button", id: "step-back", onclick: () => go(state.step - 1) }, "Back");
  const next = h("button", { type: "submit", class: "primary", id: "step-next" }, "Next");
  const form = h("form", { class: "new-run", onsubmit: (e) => { e.preventDefault(); advance(); } }, body, message, h("div", { class: "actions" }, back, next));
  root.append(h("h1", {}, "New run"), nav, form);

  function go(i) {
    state.step = Math.max(0, Math.min(STEPS.length - 1, i));
    render();
  }

  async function advance() {
    message.replaceChildren();
    try {
      if (state.step === 0 && !state.model) throw new Error("Choose a model first (install one from the command line if the list is empty).");
      if (state.step === 1 && !state.dataset) throw new Error("Give the path of a dataset file.");
      if (state.step === 2) methodConfig(state.kind, infoOf(state.kind), state.values[state.kind]);
      if (state.step < STEPS.length - 1) return go(state.step + 1);
      next.disabled = true;
      const id = await invoke("start_run", {
        request: {
          name: state.name || null,
          model: state.model,
          dataset: state.dataset,
          method: methodConfig(state.kind, infoOf(state.kind), state.values[state.kind]),
          train: state.train,
          format: state.format,
        },
      });
      location.hash = `#/runs/${id}`;
    } catch (e) {
      next.disabled = false;
      message.replaceChildren(errorBox(e instanceof Error ? e.message : describeError(e)));
    }
  }

  function render() {
    nav.replaceChildren(...STEPS.map((s, i) => h("li", { class: i === state.step ? "current" : i < state.step ? "done" : "" },
      h("button", { type: "button", onclick: () => i < state.step && go(i), disabled: i > state.step }, `${i + 1}. ${s}`))));
    back.disabled = state.step === 0;
    next.textContent = state.step === STEPS.length - 1 ? "Start training" : "Next";
    next.id = state.step === STEPS.length - 1 ? "start-run" : "step-next";
    body.replaceChildren(...[modelStep, datasetStep, methodStep, trainStep, reviewStep][state.step]());
    body.querySelector("input, select")?.focus();
  }

  function modelStep() {
    if (!models.length) return [h("p", { class: "empty" }, "No models are installed. ", h("a", { href: "#/models" }, "Import or download one"), " first.")];
    return [h("fieldset", { class: "choices", id: "model-choices" }, h("legend", {}, "Base model"),
      models.map((m) => h("label", { class: "choice" },
        h("input", { type: "radio", name: "model", value: m.name, checked: m.name === state.model, onchange: () => { state.model = m.name; } }),
        h("strong", {}, m.name), ` ${m.family || m.architecture} · ${formatCount(m.parameters)} parameters · context ${m.context_length.toLocaleString()}`)))];
  }

  function datasetStep() {
    const report = h("div", { class: "dataset-report" });
    const input = h("input", { type: "text", id: "dataset-path", value: state.dataset, placeholder: "/path/to/data.jsonl", oninput: (e) => { state.dataset = e.target.value.trim(); } });
    const check = async () => {
      report.replaceChildren(h("p", {}, "Reading…"));
      try {
        report.replaceChildren(datasetReport(await invoke("inspect_dataset", { path: state.dataset, model: state.model, format: state.format })));
      } catch (e) {
        report.replaceChildren(errorBox(describeError(e)));
      }
    };
    if (state.dataset) check();
    return [h("label", { for: "dataset-path" }, "Dataset file (JSONL, JSON, CSV, Parquet or text)"),
      h("div", { class: "row" }, input, browseButton(input, { filters: [{ name: "Datasets", extensions: ["jsonl", "json", "csv", "tsv", "parquet", "txt"] }] }), formatSelect("dataset-format", state.format, (f) => { state.format = f; check(); }),
        h("button", { type: "button", id: "check-dataset", onclick: check }, "Check")), report];
  }

  function methodStep() {
    const info = infoOf(state.kind);
    const plan = h("div", { class: "plan", id: "plan" });
    const values = state.values[state.kind];
    const refresh = debounce(async () => {
      try {
        const cfg = methodConfig(state.kind, info, values);
        const p = await invoke("plan_run", { model: state.model, method: cfg, batchSize: state.train.batch_size, seqLen: state.train.seq_len, checkpointing: !!state.train.gradient_checkpointing, precision: state.train.precision || "f32", quantize: state.train.quantize || null });
        const verdict = fitVerdict(p.memory_total, p.available);
        state.device = p.device;
        state.stored = p.stored_quantization;
        plan.replaceChildren(
          h("p", { id: "trainable" }, h("strong", {}, formatCount(p.trainable)), ` trainable parameters of ${formatCount(p.total)} (${(100 * p.trainable / p.total).toFixed(3)}%)`),
          h("p", { class: `memory memory-${verdict}`, id: "memory" }, `Predicted peak memory on ${p.device} ${formatBytes(p.memory_total)}`,
            p.available ? ` of ${formatBytes(p.available)} available` : "",
            verdict === "over" ? " — will not fit: lower the batch size or sequence length, or pick a lighter method." : verdict === "tight" ? " — tight." : ""));
      } catch (e) {
        plan.replaceChildren(errorBox(e instanceof Error ? e.message : describeError(e)));
      }
    }, 150);
    const fields = info.params.map((p) => field(p, values, refresh));
    const advanced = fields.filter((_, i) => info.params[i].advanced);
    refresh();
    return [
      h("fieldset", { class: "choices methods", id: "method-choices" }, h("legend", {}, "Method"),
        methods.map((m) => h("label", { class: "choice" },
          h("input", { type: "radio", name: "method", value: m.kind, checked: m.kind === state.kind, onchange: () => { state.kind = m.kind; render(); } }),
          h("strong", {}, m.name), " ", h("span", { class: "muted" }, m.summary)))),
      h("div", { class: "params" }, fields.filter((_, i) => !info.params[i].advanced)),
      advanced.length ? h("details", {}, h("summary", {}, "Advanced"), h("div", { class: "params" }, advanced)) : null,
      plan,
    ];
  }

  function trainStep() {
    const t = state.train;
    // The build's device as the plan named it: "cpu", "cuda:0", "metal:0".
    const device = state.device || "cpu";
    const [kind, gpu = ""] = device.split(":");
    const num = (key, label, help, step = "any") => h("label", { class: "param" }, h("span", {}, label),
      h("input", { type: "number", step, name: key, value: t[key], oninput: (e) => { t[key] = Number(e.target.value); } }), h("small", {}, help));
    return [
      h("fieldset", { class: "presets" }, h("legend", {}, "Preset"), Object.entries(PRESETS).map(([k, p]) => h("label", { class: "choice" },
        h("input", { type: "radio", name: "preset", value: k, checked: state.preset === k, onchange: () => { state.preset = k; Object.assign(t, p.train); render(); } }),
        h("strong", {}, p.label), ` ${p.help}`))),
      h("div", { class: "params" },
        num("epochs", "Epochs", "passes over the data", "1"),
        num("lr", "Learning rate", "peak rate after warm-up"),
        num("batch_size", "Batch size", "examples per step", "1"),
        num("seq_len", "Sequence length", "tokens per example; longer ones are cut", "1")),
      h("details", {}, h("summary", {}, "Advanced"), h("div", { class: "params" },
        num("val_fraction", "Validation fraction", "held out to measure validation loss"),
        num("eval_every", "Evaluate every", "steps between validation losses", "1"),
        num("weight_decay", "Weight decay", "decoupled, AdamW"),
        num("seed", "Seed", "data order and initialisation", "1"),
        h("label", { class: "param" }, h("span", {}, "Gradient checkpointing"),
          h("input", { type: "checkbox", name: "gradient_checkpointing", checked: !!t.gradient_checkpointing, onchange: (e) => { t.gradient_checkpointing = e.target.checked; } }),
          h("small", {}, "recompute each layer in the backward pass: far less memory for long sequences, about a third slower")),
        h("label", { class: "param" }, h("span", {}, "Precision"),
          h("select", { name: "precision", onchange: (e) => { t.precision = e.target.value; } },
            h("option", { value: "f32", selected: (t.precision || "f32") === "f32" }, "f32"),
            h("option", { value: "bf16", selected: t.precision === "bf16" }, "bf16 mixed")),
          h("small", {}, "bf16 mixed: half the weights' memory, trained values kept in f32; fastest on GPUs and on CPUs with AVX-512-BF16, about f32's speed on other CPUs")),
        quantizeField(t, quantizations, state.stored))),
      h("div", { class: "params" },
        h("label", { class: "param" }, h("span", {}, "Run name"), h("input", { type: "text", id: "run-name", value: state.name, oninput: (e) => { state.name = e.target.value; } })),
        h("label", { class: "param" }, h("span", {}, "Device"),
          // Runs train on this build's device (the plan says which): the GPU when the build
          // has the feature and the machine the GPU, else the CPU.
          h("select", { id: "device" },
            h("option", { value: "cpu", selected: kind === "cpu", disabled: kind !== "cpu" }, "CPU"),
            kind === "cuda"
              ? h("option", { value: device, selected: true }, `CUDA GPU ${gpu}`)
              : h("option", { disabled: true }, "CUDA GPU (needs a build with --features cuda)"),
            kind === "metal"
              ? h("option", { value: device, selected: true }, `Apple GPU ${gpu}`)
              : h("option", { disabled: true }, "Apple GPU (needs a build with --features metal)")),
          h("small", {}, "where the run trains; runs queue one at a time per device"))),
    ];
  }

  function reviewStep() {
    let method;
    try {
      method = methodConfig(state.kind, infoOf(state.kind), state.values[state.kind]);
    } catch (e) {
      return [errorBox(e.message)];
    }
    const rows = [["Model", state.model], ["Dataset", state.dataset], ["Record format", state.format], ["Method", infoOf(state.kind).name],
      ...Object.entries(method).filter(([k]) => k !== "kind").map(([k, v]) => [k, JSON.stringify(v)]),
      ...Object.entries(state.train).map(([k, v]) => [k, String(v)])];
    return [h("table", { class: "review", id: "review" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))))];
  }

  render();
}

function field(p, values, onChange) {
  const set = (v) => { values[p.field] = v; onChange(); };
  let input;
  const r = p.range;
  if (r.type === "bool") input = h("input", { type: "checkbox", name: p.field, checked: values[p.field], onchange: (e) => set(e.target.checked) });
  else if (r.type === "choice") input = h("select", { name: p.field, onchange: (e) => set(e.target.value) }, r.options.map((o) => h("option", { value: o, selected: o === values[p.field] }, o)));
  else if (r.type === "int" || r.type === "float") input = h("input", { type: "number", name: p.field, step: r.type === "int" ? "1" : "any", min: r.min, value: values[p.field], oninput: (e) => set(e.target.value) });
  else input = h("input", { type: "text", name: p.field, value: values[p.field], placeholder: r.type === "modules" ? r.options.slice(0, 4).join(", ") : "", oninput: (e) => set(e.target.value) });
  return h("label", { class: "param" }, h("span", {}, p.label), input, h("small", {}, p.help));
}

// The base's projections held quantized (QLoRA's idea); a GGUF base trains with the types it
// stores, so the choice is shown but not offered.
function quantizeField(t, quantizations, stored) {
  const select = stored
    ? h("select", { name: "quantize", disabled: true }, h("option", {}, `${stored}, as the GGUF file stores it`))
    : h("select", { name: "quantize", onchange: (e) => { t.quantize = e.target.value || null; } },
      h("option", { value: "", selected: !t.quantize }, "not quantized"),
      quantizations.map((q) => h("option", { value: q.name, selected: t.quantize === q.name }, `${q.name} (${q.bits_per_weight.toFixed(1)} bits per weight)`)));
  return h("label", { class: "param" }, h("span", {}, "Base weights"), select,
    h("small", {}, "hold the base's projections quantized while adapters train: q4_k takes about a quarter of bf16's memory, a little slower; the adapter is the same PEFT adapter"));
}

function debounce(f, ms) {
  let t;
  return () => { clearTimeout(t); t = setTimeout(f, ms); };
}
