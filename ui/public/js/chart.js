// Line charts drawn as SVG: training and validation curves, several runs on one axis.
// `layout` is pure (tested with vitest); `renderChart` builds the SVG element.

const SVG = "http://www.w3.org/2000/svg";
export const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

// "Nice" tick values covering [lo, hi].
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

// Ticks for a log axis spanning 10^lo … 10^hi: powers of ten, or 1-2-5 steps, or every
// digit when the range is narrower than that.
export function logTicks(lo, hi) {
  for (const mantissas of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    const out = [];
    for (let k = Math.floor(lo); k <= Math.ceil(hi); k++) {
      for (const m of mantissas) {
        const v = Number((m * 10 ** k).toPrecision(12));
        if (Math.log10(v) >= lo && Math.log10(v) <= hi) out.push(v);
      }
    }
    if (out.length >= 3) return out;
  }
  // Narrower than one digit step: plain ticks on the values.
  return ticks(10 ** lo, 10 ** hi, 4).filter((v) => v > 0);
}

// Scales and SVG paths for `series` ([{label, color, dashed, points: [{x, y}]}]) in a
// width × height box; with logY, non-positive values are dropped.
export function layout(series, { width, height, logY = false, pad = { l: 56, r: 16, t: 12, b: 36 } }) {
  const fy = logY ? (y) => Math.log10(y) : (y) => y;
  const visible = series.map((s) => ({ ...s, points: s.points.filter((p) => Number.isFinite(p.y) && (!logY || p.y > 0)) }));
  const all = visible.flatMap((s) => s.points);
  if (all.length === 0) return { empty: true, paths: [], xTicks: [], yTicks: [] };
  let [x0, x1] = [Math.min(...all.map((p) => p.x)), Math.max(...all.map((p) => p.x))];
  let [y0, y1] = [Math.min(...all.map((p) => fy(p.y))), Math.max(...all.map((p) => fy(p.y)))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const margin = (y1 - y0) * 0.05;
  [y0, y1] = [y0 - margin, y1 + margin];
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const sy = (v) => pad.t + (1 - (v - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const paths = visible.map((s) => ({
    label: s.label,
    color: s.color,
    dashed: Boolean(s.dashed),
    d: s.points.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(fy(p.y)).toFixed(1)}`).join(""),
    dots: s.dashed ? s.points.map((p) => [sx(p.x), sy(fy(p.y))]) : [],
  }));
  const yTicks = logY ? logTicks(y0, y1).map((v) => ({ v, at: sy(Math.log10(v)) })) : ticks(y0, y1).map((v) => ({ v, at: sy(v) }));
  const xTicks = ticks(x0, x1).map((v) => ({ v, at: sx(v) }));
  return { empty: false, paths, xTicks, yTicks, box: { x: pad.l, y: pad.t, w: width - pad.l - pad.r, h: height - pad.t - pad.b } };
}

function el(name, attrs = {}, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

// An SVG chart element; `xTitle` names the x axis.
export function renderChart(series, { width = 720, height = 300, logY = false, xTitle = "step", empty = "No data yet" } = {}) {
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": `chart of ${series.map((s) => s.label).join(", ")}` });
  const L = layout(series, { width, height, logY });
  if (L.empty) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, empty));
    return svg;
  }
  const grid = el("g", { class: "chart-grid" });
  for (const t of L.yTicks) {
    grid.append(el("line", { x1: L.box.x, x2: L.box.x + L.box.w, y1: t.at, y2: t.at }));
    grid.append(el("text", { x: L.box.x - 6, y: t.at + 4, "text-anchor": "end" }, label(t.v)));
  }
  for (const t of L.xTicks) {
    grid.append(el("text", { x: t.at, y: L.box.y + L.box.h + 16, "text-anchor": "middle" }, label(t.v)));
  }
  grid.append(el("text", { x: L.box.x + L.box.w / 2, y: height - 4, "text-anchor": "middle", class: "chart-axis-title" }, xTitle));
  svg.append(grid);
  for (const p of L.paths) {
    const g = el("g", { class: "chart-series", "data-label": p.label });
    g.append(el("path", { d: p.d, stroke: p.color, fill: "none", "stroke-width": 2, "stroke-dasharray": p.dashed ? "6 4" : "" }));
    for (const [x, y] of p.dots) g.append(el("circle", { cx: x, cy: y, r: 3, fill: p.color }));
    svg.append(g);
  }
  return svg;
}

// Horizontal bars, one per target: `bars` is [{label, value}]; pure geometry (tested).
export function barLayout(bars, { width = 720, rowHeight = 28, pad = { l: 180, r: 80, t: 8, b: 8 } } = {}) {
  const max = Math.max(0, ...bars.map((b) => (Number.isFinite(b.value) ? b.value : 0)));
  const span = width - pad.l - pad.r;
  return {
    height: pad.t + pad.b + rowHeight * bars.length,
    rows: bars.map((b, i) => ({
      label: b.label,
      value: b.value,
      y: pad.t + i * rowHeight,
      x: pad.l,
      w: max > 0 && Number.isFinite(b.value) ? Math.max(1, (b.value / max) * span) : 0,
      h: rowHeight - 8,
    })),
  };
}

// An SVG bar chart of `bars` ([{label, value}]), `title` naming the measure.
export function renderBars(bars, { width = 720, title = "" } = {}) {
  const L = barLayout(bars, { width });
  const svg = el("svg", { viewBox: `0 0 ${width} ${L.height}`, class: "chart bars", role: "img", "aria-label": `${title}: ${bars.map((b) => `${b.label} ${b.value}`).join(", ")}` });
  L.rows.forEach((r, i) => {
    const g = el("g", { class: "bar", "data-label": r.label });
    g.append(el("text", { x: r.x - 8, y: r.y + r.h / 2 + 4, "text-anchor": "end" }, r.label));
    g.append(el("rect", { x: r.x, y: r.y, width: r.w, height: r.h, fill: COLORS[i % COLORS.length] }));
    g.append(el("text", { x: r.x + r.w + 6, y: r.y + r.h / 2 + 4 }, Number.isFinite(r.value) ? label(r.value) : "–"));
    svg.append(g);
  });
  return svg;
}
