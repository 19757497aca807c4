import { describe, expect, it } from "vitest";
import { parseModules, parseLayers, methodConfig, defaultValues, formValues } from "../public/js/form.js";

// The shape `peft-studio-cli methods --json` prints (methods.test.js reads the backend's real
// answer from the snapshot ipc/methods.json).
const lora = {
  kind: "lora",
  params: [
    { field: "r", label: "Rank", default: 8, range: { type: "int", min: 1, max: 256 } },
    { field: "lora_alpha", label: "Alpha", default: 8, range: { type: "float", min: 0, max: 512 } },
    { field: "target_modules", label: "Target modules", default: null, range: { type: "modules", options: [] } },
    { field: "use_dora", label: "DoRA", default: false, range: { type: "bool" } },
    { field: "layers_to_transform", label: "Layers", default: null, range: { type: "text" } },
  ],
};

describe("method form", () => {
  it("reads module lists, all-linear and regexes as PEFT takes them", () => {
    expect(parseModules("q_proj, v_proj")).toEqual(["q_proj", "v_proj"]);
    expect(parseModules("all-linear")).toBe("all-linear");
    expect(parseModules(".*\\.(q|v)_proj")).toBe(".*\\.(q|v)_proj");
    expect(parseModules(" ")).toBeNull();
  });

  it("reads layer ranges and rejects the rest with the field named", () => {
    expect(parseLayers("0-2,5")).toEqual([0, 1, 2, 5]);
    expect(() => parseLayers("a")).toThrow(/layers/);
    expect(() => parseLayers("3-1")).toThrow(/backwards/);
  });

  it("builds the [method] table, leaving empty fields to the engine's defaults", () => {
    const values = { ...defaultValues(lora), r: "16", target_modules: "q_proj,k_proj", use_dora: true };
    expect(methodConfig("lora", lora, values)).toEqual({ kind: "lora", r: 16, lora_alpha: 8, target_modules: ["q_proj", "k_proj"], use_dora: true });
  });

  it("names the field of a bad value", () => {
    expect(() => methodConfig("lora", lora, { r: "0" })).toThrow(/Rank/);
    expect(() => methodConfig("lora", lora, { r: "2.5" })).toThrow(/Rank/);
    expect(() => methodConfig("lora", lora, { lora_alpha: "-1" })).toThrow(/Alpha/);
  });
});

describe("the demo's method", () => {
  it("fills the form with the [method] table the app sends, and reads back the same", () => {
    const shapes = { kind: "lora", r: 8, lora_alpha: 16, target_modules: ["q_proj", "v_proj"], use_dora: false, layers_to_transform: null };
    const values = formValues(shapes);
    expect(values).toEqual({ r: 8, lora_alpha: 16, target_modules: "q_proj, v_proj", use_dora: false, layers_to_transform: "" });
    expect(methodConfig("lora", lora, values)).toEqual({ kind: "lora", r: 8, lora_alpha: 16, target_modules: ["q_proj", "v_proj"], use_dora: false });
  });
});
