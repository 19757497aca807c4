import { describe, expect, it } from "vitest";
import { barLayout } from "../public/js/chart.js";

describe("barLayout", () => {
  it("scales bars to the largest value and stacks one row per target", () => {
    const L = barLayout([{ label: "base", value: 10 }, { label: "run 3", value: 5 }, { label: "run 4", value: NaN }], { width: 460, rowHeight: 20, pad: { l: 100, r: 60, t: 0, b: 0 } });
    expect(L.height).toBe(60);
    expect(L.rows.map((r) => r.y)).toEqual([0, 20, 40]);
    expect(L.rows[0].w).toBe(300);
    expect(L.rows[1].w).toBe(150);
    expect(L.rows[2].w).toBe(0);
  });

  it("draws nothing wider than zero when every value is zero", () => {
    const L = barLayout([{ label: "a", value: 0 }]);
    expect(L.rows[0].w).toBe(0);
  });
});
