// A minimal W3C WebDriver client over fetch (Node 18+): enough to drive the studio through
// tauri-driver and WebKitWebDriver without a dependency.

const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";

export class Session {
  static async start(server, application) {
    const res = await post(`${server}/session`, {
      capabilities: { alwaysMatch: { "tauri:options": { application } } },
    });
    return new Session(server, res.sessionId);
  }

  constructor(server, id) {
    this.base = `${server}/session/${id}`;
  }

  async find(css, { timeout = 20000 } = {}) {
    return this.waitFor(async () => {
      const r = await call("POST", `${this.base}/elements`, { using: "css selector", value: css });
      return r.length ? new Element(this, r[0][ELEMENT]) : null;
    }, timeout, `element ${css}`);
  }

  async findAll(css) {
    const r = await call("POST", `${this.base}/elements`, { using: "css selector", value: css });
    return r.map((e) => new Element(this, e[ELEMENT]));
  }

  // Polls `f` until it returns something truthy.
  async waitFor(f, timeout, what) {
    const end = Date.now() + timeout;
    let last;
    while (Date.now() < end) {
      try {
        const v = await f();
        if (v) return v;
      } catch (e) {
        last = e;
      }
      await sleep(100);
    }
    throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
  }

  exec(script, ...args) {
    return call("POST", `${this.base}/execute/sync`, { script, args });
  }

  async screenshot() {
    return Buffer.from(await call("GET", `${this.base}/screenshot`), "base64");
  }

  refresh() {
    return call("POST", `${this.base}/refresh`, {});
  }

  close() {
    return call("DELETE", this.base);
  }
}

export class Element {
  constructor(session, id) {
    this.s = session;
    this.url = `${session.base}/element/${id}`;
  }
  click() {
    return call("POST", `${this.url}/click`, {});
  }
  async type(text) {
    await call("POST", `${this.url}/clear`, {});
    return call("POST", `${this.url}/value`, { text });
  }
  text() {
    return call("GET", `${this.url}/text`);
  }
  attr(name) {
    return call("GET", `${this.url}/attribute/${name}`);
  }
}

async function call(method, url, body) {
  const res = await fetch(url, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok || (json.value && json.value.error)) {
    throw new Error(`${method} ${url}: ${json.value ? `${json.value.error}: ${json.value.message}` : res.status}`);
  }
  return json.value;
}

const post = (url, body) => call("POST", url, body);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
