// The method picker against the backend's real descriptions (a snapshot that the Rust test
// `ipc_snapshot_of_the_method_picker_is_current` keeps current).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { methodConfig, defaultValues } from "../public/js/form.js";

const methods = JSON.parse(readFileSync(new URL("./ipc/methods.json", import.meta.url), "utf8"));

describe("method picker", () => {
  it("offers every method the engine trains", () => {
    expect(methods.map((m) => m.kind)).toEqual(["lora", "ia3", "prompt-tuning", "prefix-tuning", "houlsby", "pfeiffer", "freeze", "full"]);
  });

  it("says which methods train an encoder-decoder model (T5)", () => {
    expect(methods.filter((m) => m.encoder_decoder).map((m) => m.kind)).toEqual(["lora", "ia3", "prompt-tuning", "prefix-tuning", "freeze", "full"]);
  });

  it("turns each method's defaults into a config the engine reads", () => {
    for (const m of methods) {
      const cfg = methodConfig(m.kind, m, defaultValues(m));
      expect(cfg.kind).toBe(m.kind);
      for (const [k, v] of Object.entries(cfg)) {
        if (k === "kind") continue;
        const p = m.params.find((x) => x.field === k);
        expect(p, `${m.kind}.${k}`).toBeDefined();
        if (p.default !== null) expect(v).toEqual(p.default);
      }
    }
  });

  it("gives every field a label and a one-line help", () => {
    for (const m of methods) for (const p of m.params) {
      expect(p.label.length).toBeGreaterThan(0);
      expect(p.help).toMatch(/\.$/);
    }
  });
});
