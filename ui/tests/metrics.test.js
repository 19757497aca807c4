import { describe, expect, it } from "vitest";
import { mergeRows, sortedRows, pointsOf, etaSeconds, formatDuration, formatBytes, fitVerdict } from "../public/js/metrics.js";

describe("live rows", () => {
  it("keeps the newest row per step, merging late fields", () => {
    const m = new Map();
    mergeRows(m, [{ step: 1, loss: 2.0, eval_loss: null }, { step: 2, loss: 1.5 }]);
    mergeRows(m, [{ step: 2, loss: 1.5, eval_loss: 1.7 }]);
    expect(sortedRows(m)).toEqual([{ step: 1, loss: 2.0 }, { step: 2, loss: 1.5, eval_loss: 1.7 }]);
  });

  it("takes a resent history after a resume without duplicates", () => {
    const m = new Map();
    mergeRows(m, [{ step: 1, loss: 3 }, { step: 2, loss: 2 }, { step: 3, loss: 1 }]);
    mergeRows(m, [{ step: 1, loss: 3 }, { step: 2, loss: 2 }, { step: 3, loss: 0.9 }]);
    expect(sortedRows(m).map((r) => r.loss)).toEqual([3, 2, 0.9]);
  });

  it("plots only rows that have the field", () => {
    const rows = [{ step: 0, eval_loss: 3 }, { step: 1, loss: 2 }, { step: 2, loss: NaN }];
    expect(pointsOf(rows, "loss")).toEqual([{ x: 1, y: 2 }]);
    expect(pointsOf(rows, "eval_loss")).toEqual([{ x: 0, y: 3 }]);
  });

  it("estimates the time left from the recent pace", () => {
    const rows = [1, 2, 3, 4].map((s) => ({ step: s, wall_s: s * 2 }));
    expect(etaSeconds(rows, 10)).toBe(12);
    expect(etaSeconds(rows.slice(0, 1), 10)).toBeNull();
    expect(etaSeconds(rows, null)).toBeNull();
  });
});

describe("formatting", () => {
  it("says durations and sizes as people read them", () => {
    expect(formatDuration(42)).toBe("42 s");
    expect(formatDuration(125)).toBe("2 min 5 s");
    expect(formatDuration(3 * 3600 + 60)).toBe("3 h 1 min");
    expect(formatDuration(null)).toBe("–");
    expect(formatBytes(3 * 2 ** 30)).toBe("3.00 GiB");
    expect(formatBytes(5 * 2 ** 20)).toBe("5 MiB");
  });

  it("warns before a run that will not fit", () => {
    expect(fitVerdict(10, 100)).toBe("fits");
    expect(fitVerdict(90, 100)).toBe("tight");
    expect(fitVerdict(101, 100)).toBe("over");
    expect(fitVerdict(1, null)).toBe("unknown");
  });
});
