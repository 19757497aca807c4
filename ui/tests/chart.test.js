// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { ticks, logTicks, layout, renderChart } from "../public/js/chart.js";
import { bins } from "../public/js/views/datasets.js";

describe("chart", () => {
  it("puts ticks on round numbers covering the range", () => {
    expect(ticks(0, 10)).toEqual([0, 2, 4, 6, 8, 10]);
    expect(ticks(0.13, 0.61)).toEqual([0.2, 0.3, 0.4, 0.5, 0.6]);
  });

  it("maps points into the box, y growing upwards", () => {
    const L = layout([{ label: "a", color: "#000", points: [{ x: 0, y: 0 }, { x: 10, y: 1 }] }], { width: 200, height: 100, pad: { l: 0, r: 0, t: 0, b: 0 } });
    const [m, l] = L.paths[0].d.split("L");
    expect(Number(m.slice(1).split(",")[1])).toBeGreaterThan(Number(l.split(",")[1]));
    expect(L.paths[0].d.startsWith("M0.0,")).toBe(true);
  });

  it("drops non-positive values on a log scale and says when there is nothing", () => {
    const L = layout([{ label: "a", color: "#000", points: [{ x: 1, y: 0 }, { x: 2, y: 10 }, { x: 3, y: 100 }] }], { width: 200, height: 100, logY: true });
    expect(L.paths[0].d.split("L")).toHaveLength(2);
    expect(L.yTicks.map((t) => t.v)).toEqual([10, 20, 50, 100]);
    expect(layout([], { width: 10, height: 10 }).empty).toBe(true);
  });

  it("labels a log axis however narrow its range", () => {
    expect(logTicks(0, 3)).toEqual([1, 10, 100, 1000]);
    expect(logTicks(Math.log10(0.9), Math.log10(6))).toEqual([1, 2, 5]);
    expect(logTicks(Math.log10(0.9), Math.log10(3.5)).length).toBeGreaterThanOrEqual(3);
    expect(logTicks(Math.log10(5.2), Math.log10(5.8)).length).toBeGreaterThan(1);
  });

  it("renders one path per series, dashed validation with dots", () => {
    const svg = renderChart([
      { label: "train", color: "#111", points: [{ x: 1, y: 2 }, { x: 2, y: 1 }] },
      { label: "val", color: "#222", dashed: true, points: [{ x: 2, y: 1.5 }] },
    ]);
    expect(svg.querySelectorAll("path")).toHaveLength(2);
    expect(svg.querySelectorAll("circle")).toHaveLength(1);
    expect(renderChart([]).textContent).toBe("No data yet");
  });

  it("bins token lengths for the histogram, every record counted once", () => {
    const b = bins([1, 2, 3, 40, 40, 100]);
    expect(b.reduce((s, x) => s + x.n, 0)).toBe(6);
    expect(b[b.length - 1].n).toBe(1);
  });
});
