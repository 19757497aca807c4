// Pure helpers over metric rows and runs: no DOM, tested with vitest.

// Keeps the newest row per step: the backend may send a step again with more fields (its
// validation loss), or the whole history again after a resume.
export function mergeRows(byStep, rows) {
  for (const r of rows) {
    byStep.set(r.step, { ...(byStep.get(r.step) || {}), ...stripNulls(r) });
  }
  return byStep;
}

function stripNulls(r) {
  const out = {};
  for (const [k, v] of Object.entries(r)) if (v !== null && v !== undefined) out[k] = v;
  return out;
}

// Rows sorted by step.
export function sortedRows(byStep) {
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

// Points {x, y} of one field, skipping rows without it.
export function pointsOf(rows, field, xField = "step") {
  return rows
    .filter((r) => typeof r[field] === "number" && Number.isFinite(r[field]) && typeof r[xField] === "number")
    .map((r) => ({ x: r[xField], y: r[field] }));
}

// Seconds left, from the pace of the last rows; null when it cannot be told.
export function etaSeconds(rows, totalSteps) {
  const timed = rows.filter((r) => r.step > 0 && typeof r.wall_s === "number");
  if (!totalSteps || timed.length < 2) return null;
  const recent = timed.slice(-20);
  const first = recent[0];
  const last = recent[recent.length - 1];
  const perStep = (last.wall_s - first.wall_s) / Math.max(1, last.step - first.step);
  if (!(perStep > 0)) return null;
  return Math.max(0, (totalSteps - last.step) * perStep);
}

export function formatDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${sec} s`;
  return `${sec} s`;
}

export function formatBytes(b) {
  if (b === null || b === undefined || !Number.isFinite(b)) return "–";
  if (b >= 2 ** 30) return `${(b / 2 ** 30).toFixed(2)} GiB`;
  if (b >= 2 ** 20) return `${Math.round(b / 2 ** 20)} MiB`;
  return `${Math.round(b / 1024)} KiB`;
}

export function formatCount(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

export function formatLoss(x) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(4) : "–";
}

// Whether a predicted peak fits the memory available: "fits", "tight" (over 85%), "over".
export function fitVerdict(predicted, available) {
  if (!available) return "unknown";
  if (predicted > available) return "over";
  if (predicted > 0.85 * available) return "tight";
  return "fits";
}
