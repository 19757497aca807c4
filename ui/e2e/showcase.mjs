// Screenshots for the README with a real model: the playground comparing a base model with
// two of its adapters. Needs a studio home and catalog that hold them; run under Xvfb with
// tauri-driver listening, e.g.
//   PEFT_STUDIO_HOME=… PEFT_STUDIO_CATALOG=… tauri-driver &
//   APP=$PWD/../target/release/peft-studio SHOTS=out PROMPT="…" node e2e/showcase.mjs
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Session } from "./webdriver.mjs";

const { APP, WEBDRIVER = "http://127.0.0.1:4444", SHOTS = "showcase", PROMPT = "What is the capital of Ukraine?" } = process.env;
mkdirSync(SHOTS, { recursive: true });
const s = await Session.start(WEBDRIVER, APP);
try {
  await s.exec("location.hash = '#/playground'");
  await (await s.find("#pg-prompt")).type(PROMPT);
  await (await s.find("#pg-max")).type("24");
  await (await s.find("#pg-generate")).click();
  await s.waitFor(async () => (await s.findAll('.pg-output[data-done="1"]')).length >= 3, 300000, "three generations");
  writeFileSync(join(SHOTS, "playground.png"), await s.screenshot());
  for (const e of await s.findAll(".pg-output")) console.log(JSON.stringify(await e.text()));
} finally {
  await s.close().catch(() => {});
}
