// New run: a stepper (model → dataset → method → hyperparameters → review).
import { invoke, describeError, browseButton } from "../api.js";
import { h, errorBox } from "../dom.js";
import { fitVerdict, formatBytes, formatCount } from "../metrics.js";
import { methodConfig, settingsTable, defaultValues, formValues } from "../form.js";
import { datasetReport, formatSelect } from "./datasets.js";

const STEPS = ["Model", "Dataset", "Method", "Hyperparameters", "Review"];

export async function newRun(root, params) {
  const [models, methods, quantizations, settings] = await Promise.all([invoke("list_models"), invoke("list_methods"), invoke("list_quantizations"), invoke("form_settings")]);
  // Every field, the hyperparameters step and the review come from the app's descriptions.
  const trainInfo = { params: settings.train };
  const [firstPreset] = settings.presets;
  const state = {
    step: 0,
    model: models[0]?.name || "",
    dataset: "",
    format: "auto",
    kind: "lora",
    values: Object.fromEntries(methods.map((m) => [m.kind, defaultValues(m)])),
    preset: firstPreset.name,
    train: { ...defaultValues(trainInfo), ...formValues(settings.start), ...formValues(firstPreset.train) },
    name: "",
    evalTask: "",
    evalData: "",
    // Where it trains (`[target]`): this machine's engine, or a job for accelerate.
    target: { kind: "local", processes: 2, device: "gpu", strategy: "ddp", python: "python3", host: "" },
  };
  if (params.get("demo")) {
    const demo = await invoke("demo_setup");
    if (demo.model) state.model = demo.model;
    state.dataset = demo.dataset;
    state.train = { ...state.train, ...formValues(demo.train) };
    // The demo's method as the app declares it, as the form's text values.
    state.kind = demo.method.kind;
    state.values[demo.method.kind] = { ...state.values[demo.method.kind], ...formValues(demo.method) };
    state.name = "demo";
  }
  const infoOf = (kind) => methods.find((m) => m.kind === kind);
  // An encoder-decoder model (T5) trains with fewer methods: the picker offers those.
  const usableMethods = () => {
    const model = models.find((m) => m.name === state.model);
    return methods.filter((m) => !model?.encoder_decoder || m.encoder_decoder);
  };
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
      if (state.step === 3) settingsTable(settings.train, state.train);
      if (state.step < STEPS.length - 1) return go(state.step + 1);
      next.disabled = true;
      const id = await invoke("start_run", {
        request: {
          name: state.name || null,
          model: state.model,
          dataset: state.dataset,
          method: methodConfig(state.kind, infoOf(state.kind), state.values[state.kind]),
          train: settingsTable(settings.train, state.train),
          format: state.format,
          eval: { task: state.evalTask || null, data: state.evalTask ? state.evalData.trim() || null : null, max_new_tokens: 64 },
          target: { ...state.target, processes: Number(state.target.processes), host: state.target.kind === "ssh" ? state.target.host : null },
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
    // An encoder-decoder model (T5) reads only records with a source and a target.
    const formats = models.find((m) => m.name === state.model)?.encoder_decoder ? settings.pair_formats : settings.formats;
    if (!formats.includes(state.format)) state.format = "auto";
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
      h("div", { class: "row" }, input, browseButton(input, { filters: [{ name: "Datasets", extensions: ["jsonl", "json", "csv", "tsv", "parquet", "txt"] }] }), formatSelect("dataset-format", formats, state.format, (f) => { state.format = f; check(); }),
        h("button", { type: "button", id: "check-dataset", onclick: check }, "Check")), report];
  }

  function methodStep() {
    const usable = usableMethods();
    if (!usable.some((m) => m.kind === state.kind)) state.kind = usable[0].kind;
    const info = infoOf(state.kind);
    const plan = h("div", { class: "plan", id: "plan" });
    const values = state.values[state.kind];
    const refresh = debounce(async () => {
      try {
        const cfg = methodConfig(state.kind, info, values);
        const t = settingsTable(settings.train, state.train);
        const p = await invoke("plan_run", { model: state.model, method: cfg, batchSize: t.batch_size, seqLen: t.seq_len, checkpointing: !!t.gradient_checkpointing, precision: t.precision, quantize: t.quantize || null });
        const verdict = p.memory_total === null ? "unknown" : fitVerdict(p.memory_total, p.available);
        state.device = p.device;
        state.stored = p.stored_quantization;
        plan.replaceChildren(
          h("p", { id: "trainable" }, h("strong", {}, formatCount(p.trainable)), ` trainable parameters of ${formatCount(p.total)} (${(100 * p.trainable / p.total).toFixed(3)}%)`),
          p.memory_total === null ? h("p", { class: "memory", id: "memory" }, `Peak memory on ${p.device}: not predicted for this model yet`) :
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
        usable.map((m) => h("label", { class: "choice" },
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
    // The base's quantization has its own field: a GGUF base shows what it stores instead.
    const fieldOf = (p) => (p.field === "quantize" ? quantizeField(p, t, quantizations, state.stored) : field(p, t, () => {}));
    return [
      h("fieldset", { class: "presets" }, h("legend", {}, "Preset"), settings.presets.map((p) => h("label", { class: "choice" },
        h("input", { type: "radio", name: "preset", value: p.name, checked: state.preset === p.name, onchange: () => { state.preset = p.name; Object.assign(t, formValues(p.train)); render(); } }),
        h("strong", {}, p.label), ` ${p.help}`))),
      h("div", { class: "params" }, settings.train.filter((p) => !p.advanced).map(fieldOf)),
      h("details", {}, h("summary", {}, "Advanced"), h("div", { class: "params" }, settings.train.filter((p) => p.advanced).map(fieldOf))),
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
    let method, train;
    try {
      method = methodConfig(state.kind, infoOf(state.kind), state.values[state.kind]);
      train = settingsTable(settings.train, state.train);
    } catch (e) {
      return [errorBox(e.message)];
    }
    const rows = [["Model", state.model], ["Dataset", state.dataset], ["Record format", state.format], ["Method", infoOf(state.kind).name],
      ...Object.entries(method).filter(([k]) => k !== "kind").map(([k, v]) => [k, JSON.stringify(v)]),
      ...Object.entries(train).map(([k, v]) => [k, String(v)])];
    // The adapter measured when the run ends (`[eval]`), kept against the run for Compare.
    const evalTask = h("select", { id: "eval-at-end", onchange: (e) => { state.evalTask = e.target.value; } },
      [["", "no"], ["perplexity", "perplexity"], ["generation", "generation metrics"], ["choice", "multiple choice"]]
        .map(([v, label]) => h("option", { value: v, selected: v === state.evalTask }, label)));
    const evalData = h("input", { type: "text", id: "eval-at-end-data", value: state.evalData, placeholder: "/path/to/heldout.jsonl", oninput: (e) => { state.evalData = e.target.value; } });
    return [h("table", { class: "review", id: "review" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))),
      h("fieldset", {}, h("legend", {}, "Evaluate the adapter when the run ends"),
        h("div", { class: "row" }, h("label", {}, "task ", evalTask), h("label", {}, "file ", evalData),
          browseButton(evalData, { filters: [{ name: "Data", extensions: ["jsonl", "json", "csv", "tsv", "txt"] }] }))),
      targetFields(state.target)];
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
function quantizeField(p, t, quantizations, stored) {
  const select = stored
    ? h("select", { name: p.field, disabled: true }, h("option", {}, `${stored}, as the GGUF file stores it`))
    : h("select", { name: p.field, onchange: (e) => { t[p.field] = e.target.value; } },
      h("option", { value: "", selected: !t[p.field] }, "not quantized"),
      quantizations.map((q) => h("option", { value: q.name, selected: t[p.field] === q.name }, `${q.name} (${q.bits_per_weight.toFixed(1)} bits per weight)`)));
  return h("label", { class: "param" }, h("span", {}, p.label), select, h("small", {}, p.help));
}

// Where the run trains: the studio's engine here, or a job handed to accelerate (transformers +
// PEFT) here, on a machine over ssh or on a Slurm cluster, followed like a local run
// (docs/HANDOFF.md).
function targetFields(t) {
  const host = h("label", { hidden: t.kind !== "ssh" }, "host ", h("input", { type: "text", id: "target-host", value: t.host, placeholder: "me@gpu-box", oninput: (e) => { t.host = e.target.value.trim(); } }));
  const job = h("div", { class: "row", hidden: t.kind === "local" },
    h("label", {}, "processes ", h("input", { type: "number", id: "target-processes", min: 1, step: 1, value: t.processes, oninput: (e) => { t.processes = e.target.value; } })),
    h("label", {}, "on ", h("select", { id: "target-device", onchange: (e) => { t.device = e.target.value; } },
      [["gpu", "GPUs (one per process)"], ["cpu", "CPU processes"]].map(([v, label]) => h("option", { value: v, selected: v === t.device }, label)))),
    h("label", {}, "sharing ", h("select", { id: "target-strategy", onchange: (e) => { t.strategy = e.target.value; } },
      [["ddp", "DDP (a model per process)"], ["fsdp", "FSDP"], ["zero2", "DeepSpeed ZeRO-2"], ["zero3", "DeepSpeed ZeRO-3"]].map(([v, label]) => h("option", { value: v, selected: v === t.strategy }, label)))),
    h("label", {}, "Python ", h("input", { type: "text", id: "target-python", value: t.python, oninput: (e) => { t.python = e.target.value.trim(); } })));
  const kind = h("select", { id: "target-kind", onchange: (e) => { t.kind = e.target.value; job.hidden = t.kind === "local"; host.hidden = t.kind !== "ssh"; } },
    [["local", "this machine, the studio's engine"], ["accelerate", "accelerate on this machine (transformers + PEFT)"], ["ssh", "accelerate on another machine, over ssh"], ["slurm", "a Slurm cluster (sbatch from here)"]]
      .map(([v, label]) => h("option", { value: v, selected: v === t.kind }, label)));
  return h("fieldset", { id: "target" }, h("legend", {}, "Where it trains"), h("div", { class: "row" }, h("label", {}, "trainer ", kind), host), job,
    h("small", {}, "A hand-off trains the same tokens from the same initial adapter; its steps, checkpoints and adapter come back here. The micro-batches of a step (grad_accum) are split between the processes."));
}

function debounce(f, ms) {
  let t;
  return () => { clearTimeout(t); t = setTimeout(f, ms); };
}
