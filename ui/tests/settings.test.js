// The hyperparameters step against the backend's real descriptions (a snapshot that the Rust
// test `ipc_snapshot_of_the_form_settings_is_current` keeps current).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { settingsTable, defaultValues, formValues } from "../public/js/form.js";

const settings = JSON.parse(readFileSync(new URL("./ipc/settings.json", import.meta.url), "utf8"));
const info = { params: settings.train };

describe("training settings", () => {
  it("turns the defaults into the engine's own values", () => {
    const table = settingsTable(settings.train, defaultValues(info));
    for (const p of settings.train) {
      if (p.default === null) expect(table[p.field], p.field).toBeUndefined();
      else expect(table[p.field], p.field).toEqual(p.default);
    }
  });

  it("starts from the first preset, and every preset is a valid table", () => {
    const start = { ...defaultValues(info), ...formValues(settings.start), ...formValues(settings.presets[0].train) };
    expect(settingsTable(settings.train, start).val_fraction).toBe(settings.start.val_fraction);
    for (const p of settings.presets) {
      const table = settingsTable(settings.train, { ...start, ...formValues(p.train) });
      for (const [k, v] of Object.entries(p.train)) expect(table[k], `${p.name}.${k}`).toEqual(v);
    }
  });

  it("names the field of a bad value", () => {
    expect(() => settingsTable(settings.train, { ...defaultValues(info), lr: "-1" })).toThrow(/Learning rate/);
    expect(() => settingsTable(settings.train, { ...defaultValues(info), batch_size: "0.5" })).toThrow(/Batch size/);
  });

  it("gives every setting a label and a one-line help, and offers the record formats", () => {
    for (const p of settings.train) {
      expect(p.label.length).toBeGreaterThan(0);
      expect(p.help).toMatch(/\.$/);
    }
    expect(settings.formats[0]).toBe("auto");
    // An encoder-decoder model is offered every format but plain text.
    expect(settings.pair_formats).toEqual(settings.formats.filter((f) => f !== "text"));
  });

  it("offers the export formats, the adapter first, GGUF ones as files", () => {
    expect(settings.exports[0].format).toBe("peft");
    for (const e of settings.exports) expect(e.file).toBe(e.format.startsWith("gguf"));
  });
});
