// Turning the method picker's fields into a `[method]` table and back: pure, tested.

// "q_proj, v_proj" → ["q_proj", "v_proj"]; "all-linear" or a regex stays a string.
export function parseModules(text) {
  const t = (text || "").trim();
  if (!t) return null;
  if (t === "all-linear" || /[\\^$*+?()[\]{}|]/.test(t)) return t;
  return t.split(",").map((s) => s.trim()).filter(Boolean);
}

// "0-2,5" → [0, 1, 2, 5]; throws on anything else.
export function parseLayers(text) {
  const t = (text || "").trim();
  if (!t) return null;
  const out = [];
  for (const part of t.split(",")) {
    const m = part.trim().match(/^(\d+)(?:-(\d+))?$/);
    if (!m) throw new Error(`layers: \`${part.trim()}\` is not a number or a range like 0-15`);
    const [a, b] = [Number(m[1]), Number(m[2] ?? m[1])];
    if (b < a) throw new Error(`layers: ${a}-${b} runs backwards`);
    for (let i = a; i <= b; i++) out.push(i);
  }
  return out;
}

// The method config for `kind` from the form's raw values ({field: string|bool}).
export function methodConfig(kind, info, values) {
  const cfg = { kind };
  for (const p of info.params) {
    const raw = values[p.field];
    if (raw === undefined || raw === "" || raw === null) continue;
    switch (p.range.type) {
      case "int": {
        const n = Number(raw);
        if (!Number.isInteger(n) || n < p.range.min) throw new Error(`${p.label}: must be a whole number ≥ ${p.range.min}`);
        cfg[p.field] = n;
        break;
      }
      case "float": {
        const x = Number(raw);
        if (!Number.isFinite(x) || x < p.range.min || x > p.range.max) throw new Error(`${p.label}: must be between ${p.range.min} and ${p.range.max}`);
        cfg[p.field] = x;
        break;
      }
      case "bool":
        cfg[p.field] = Boolean(raw);
        break;
      case "modules": {
        const m = parseModules(raw);
        if (m !== null) cfg[p.field] = p.field === "trainable_modules" && typeof m === "string" ? [m] : m;
        break;
      }
      default:
        cfg[p.field] = p.field === "layers_to_transform" ? parseLayers(raw) : String(raw);
    }
  }
  return cfg;
}

// The form's starting values for a method: its defaults, as text.
export function defaultValues(info) {
  const out = {};
  for (const p of info.params) {
    if (p.default === null) out[p.field] = "";
    else if (Array.isArray(p.default)) out[p.field] = p.default.join(", ");
    else out[p.field] = p.default;
  }
  return out;
}
