// The UI's requests against the commands' parameters as the Rust source declares them
// (ui/tests/ipc/commands.json, kept current by the Rust test
// `ipc_snapshot_of_the_commands_is_current`): a parameter renamed in Rust, a key misspelled
// here, or a required one left out fails, as a renamed answer field fails ipc.test.js.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const commands = JSON.parse(readFileSync(new URL("./ipc/commands.json", import.meta.url), "utf8"));
const root = fileURLToPath(new URL("../public/js", import.meta.url));

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith(".js") ? [p] : [];
  });
}

// The top-level keys of the object literal starting at `text[at]` ("{"), and whether it
// spreads another object into itself.
export function literalKeys(text, at) {
  const keys = [];
  let spread = false, depth = 0, quote = null, start = at + 1;
  const take = (end) => {
    const p = text.slice(start, end).trim();
    if (p.startsWith("...")) spread = true;
    else if (p) keys.push(p.match(/^["']?([A-Za-z_$][\w$]*)/)[1]);
  };
  for (let i = at; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = null;
    } else if (c === '"' || c === "'" || c === "`") quote = c;
    else if ("{[(".includes(c)) depth++;
    else if ("}])".includes(c) && --depth === 0) {
      take(i);
      return { keys, spread };
    } else if (c === "," && depth === 1) {
      take(i);
      start = i + 1;
    }
  }
  throw new Error(`unclosed object literal at ${at}`);
}

// Every `invoke("name", {…})` and `withProgress("name", {…})` (which adds `onProgress`).
function requests() {
  const out = [];
  for (const file of files(root)) {
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/\b(invoke|withProgress)\("([a-z_]+)"\s*(,\s*)?/g)) {
      const after = m.index + m[0].length;
      const args = m[3] && text[after] === "{" ? literalKeys(text, after) : { keys: [], spread: false };
      if (m[1] === "withProgress") args.keys.push("onProgress");
      out.push({ file: file.slice(root.length + 1), command: m[2], ...args });
    }
  }
  return out;
}

describe("IPC requests", () => {
  const all = requests();

  it("reads the UI's calls", () => {
    expect(all.length).toBeGreaterThan(20);
    expect(literalKeys('{ id, x: f(a, b), ...rest, y: { z: 1 } }', 0)).toEqual({ keys: ["id", "x", "y"], spread: true });
  });

  for (const r of all) {
    it(`${r.file}: ${r.command} is sent only parameters the command declares, and every required one`, () => {
      const params = commands[r.command];
      expect(params, `${r.command} is a command`).toBeDefined();
      for (const k of r.keys) expect(Object.keys(params), `${r.command}.${k}`).toContain(k);
      if (!r.spread) {
        for (const [k, required] of Object.entries(params)) if (required) expect(r.keys, `${r.command} needs ${k}`).toContain(k);
      }
    });
  }
});
