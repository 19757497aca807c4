// @vitest-environment jsdom
// The Browse… button against a backend whose dialog answers, is cancelled, or fails.
import { afterEach, describe, expect, it } from "vitest";
import { browseButton, pickPath } from "../public/js/api.js";

function backend(answer) {
  window.__TAURI__ = { core: { invoke: async (cmd, args) => answer(cmd, args) } };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

afterEach(() => {
  delete window.__TAURI__;
  document.body.innerHTML = "";
});

describe("Browse…", () => {
  it("fills the input with the picked path, opening at the typed one", async () => {
    let asked = null;
    backend((cmd, args) => {
      asked = [cmd, args.options.defaultPath];
      return "/home/me/data.jsonl";
    });
    const input = document.createElement("input");
    input.value = "/home/me/old.jsonl";
    const b = browseButton(input, {});
    document.body.append(input, b);
    b.click();
    await settle();
    expect(asked).toEqual(["choose_path", "/home/me/old.jsonl"]);
    expect(input.value).toBe("/home/me/data.jsonl");
  });

  it("leaves the input alone when the dialog is cancelled", async () => {
    backend(() => null);
    expect(await pickPath()).toBeNull();
    const input = document.createElement("input");
    input.value = "typed";
    const b = browseButton(input, {});
    document.body.append(input, b);
    b.click();
    await settle();
    expect(input.value).toBe("typed");
    expect(document.querySelector("[role=alert]")).toBeNull();
  });

  it("says why when the dialog fails, and clears it on the next try", async () => {
    let fail = true;
    backend(() => {
      if (fail) throw { message: "no display", hint: "run the studio in a desktop session" };
      return null;
    });
    await expect(pickPath()).rejects.toEqual({ message: "no display", hint: "run the studio in a desktop session" });
    const input = document.createElement("input");
    const b = browseButton(input, {});
    document.body.append(input, b);
    b.click();
    await settle();
    const alert = document.querySelector("[role=alert]");
    expect(alert.textContent).toBe("The file dialog failed: no display — run the studio in a desktop session");
    fail = false;
    b.click();
    await settle();
    expect(document.querySelector("[role=alert]")).toBeNull();
  });
});
