// Turning the New run form's fields into `[method]` and `[train]` tables and back: pure, tested.

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

// A table of settings (`[method]` or `[train]`) from the form's raw values ({field:
// string|bool}) and the settings' descriptions; empty fields are left to the engine's defaults.
export function settingsTable(params, values) {
  const out = {};
  for (const p of params) {
    const raw = values[p.field];
    if (raw === undefined || raw === "" || raw === null) continue;
    switch (p.range.type) {
      case "int": {
        const n = Number(raw);
        if (!Number.isInteger(n) || n < p.range.min) throw new Error(`${p.label}: must be a whole number ≥ ${p.range.min}`);
        out[p.field] = n;
        break;
      }
      case "float": {
        const x = Number(raw);
        if (!Number.isFinite(x) || x < p.range.min || x > p.range.max) throw new Error(`${p.label}: must be between ${p.range.min} and ${p.range.max}`);
        out[p.field] = x;
        break;
      }
      case "bool":
        out[p.field] = Boolean(raw);
        break;
      case "modules": {
        const m = parseModules(raw);
        // A field that holds a list of names (its default is one) takes a lone pattern as one name.
        if (m !== null) out[p.field] = Array.isArray(p.default) && typeof m === "string" ? [m] : m;
        break;
      }
      case "layers":
        out[p.field] = parseLayers(raw);
        break;
      default:
        out[p.field] = String(raw);
    }
  }
  return out;
}

// The method config for `kind` from the form's raw values.
export function methodConfig(kind, info, values) {
  return { kind, ...settingsTable(info.params, values) };
}

// A value as the form holds it: lists as comma-separated text, unset as "".
function asFormValue(v) {
  if (v === null || v === undefined) return "";
  return Array.isArray(v) ? v.join(", ") : v;
}

// The form's starting values for settings (a method's `info`, or `{ params }`): their
// defaults, as text.
export function defaultValues(info) {
  return Object.fromEntries(info.params.map((p) => [p.field, asFormValue(p.default)]));
}

// A settings table (as the app sends it) as the form's values; a method's `kind` is not a field.
export function formValues(table) {
  return Object.fromEntries(Object.entries(table).filter(([k]) => k !== "kind").map(([k, v]) => [k, asFormValue(v)]));
}
