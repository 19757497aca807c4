// The fields the screens read from each command's answer, checked against the shapes of the
// backend's real answers (ui/tests/ipc/shapes.json, kept current by the Rust test
// `commands_over_ipc_in_a_fresh_home`): a field renamed in Rust fails here.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const shapes = JSON.parse(readFileSync(new URL("./ipc/shapes.json", import.meta.url), "utf8"));

const READS = {
  list_runs: [["0", "id"], ["0", "name"], ["0", "status"], ["0", "method"], ["0", "last_step"], ["0", "last_loss"], ["0", "best_eval_loss"], ["0", "created_at"]],
  get_run: [["can_stop"], ["can_resume"], ["run", "status"], ["run", "total_steps"], ["run", "peak_memory_bytes"], ["run", "device"], ["run", "error"], ["run", "out_dir"], ["run", "name"], ["adapters"], ["checkpoints"]],
  compare_runs: [["runs", "0", "id"], ["runs", "0", "last_loss"], ["series", "0", "run_id"], ["series", "0", "label"], ["series", "0", "loss", "0", "x"], ["series", "0", "loss", "0", "y"], ["series", "0", "eval_loss"], ["config_diff"]],
  plan_run: [["trainable"], ["total"], ["memory_total"], ["available"], ["device"], ["stored_quantization"]],
  list_quantizations: [["0", "name"], ["0", "bits_per_weight"]],
  inspect_dataset: [["summary"], ["report", "problems"], ["tokens", "examples"], ["tokens", "total_tokens"], ["tokens", "trained_tokens"], ["tokens", "median"], ["tokens", "p95"], ["tokens", "max"], ["lengths"], ["preview", "0", "line"], ["preview", "0", "text"], ["preview", "0", "trained"]],
  demo_setup: [["model"], ["dataset"], ["train", "epochs"]],
  list_models: [["0", "name"], ["0", "architecture"], ["0", "parameters"], ["0", "context_length"], ["0", "size_bytes"], ["0", "source"]],
  metric_row: [["step"], ["loss"], ["eval_loss"], ["lr"], ["grad_norm"], ["tokens_per_s"], ["wall_s"]],
};

function has(shape, path) {
  let at = shape;
  for (const key of path) {
    if (at === undefined || at === null) return false;
    at = Array.isArray(at) ? at[Number(key)] : at[key];
  }
  return at !== undefined;
}

describe("IPC contract", () => {
  for (const [cmd, paths] of Object.entries(READS)) {
    it(`${cmd} answers with every field the UI reads`, () => {
      expect(shapes[cmd], cmd).toBeDefined();
      for (const p of paths) expect(has(shapes[cmd], p), `${cmd}.${p.join(".")}`).toBe(true);
    });
  }
});
