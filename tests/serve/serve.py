"""The studio's server (`peft-studio-cli serve`) as other apps use it, with the official
`openai` client and raw sockets. Subcommands (tests/serve/run drives them):

  clients URL CLI MODEL NAME=ADAPTER...  models listed; chat and completions, whole and
      streamed, from the base and each adapter; greedy text equal to `peft-studio-cli
      generate` for the same prompt and adapter.
  load URL SERIAL_URL SECONDS CLIENTS NAME...  CLIENTS concurrent streaming clients mixing
      the base and the adapters for SECONDS: every greedy answer equal to its single-request
      answer, zero errors; p50/p99 latency and aggregate tokens/s, then the same against
      SERIAL_URL (a server decoding one request at a time) and the ratio.
  hostile URL  a 10 MB body, invalid UTF-8, negative max_tokens, 500 simultaneous
      connections, a client that never reads, a client that leaves mid-stream: each gets an
      error or is shed, and the next good request is answered.
Exits non-zero on the first failure, naming it.
"""

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

from openai import AsyncOpenAI, OpenAI, APIStatusError


def fail(what):
    print(f"FAIL: {what}", flush=True)
    sys.exit(1)


def check(ok, what):
    if not ok:
        fail(what)
    print(f"ok: {what}", flush=True)


def client(url, key="none"):
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)


def generate(cli, model, prompt, tokens, adapter=None, chat=True):
    args = [cli, "generate", "--model", model, "--prompt", prompt, "--max-new-tokens", str(tokens)]
    if chat:
        args.append("--chat")
    if adapter:
        args += ["--adapter", adapter]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return out[:-1] if out.endswith("\n") else out


def clients(url, cli, model, *adapters):
    c = client(url)
    pairs = [a.split("=", 1) for a in adapters]
    ids = [m.id for m in c.models.list().data]
    check(len(ids) == 1 + len(pairs) and all(n in ids for n, _ in pairs), f"models listed: {ids}")
    base = ids[0]
    prompt = "Name three colours of the rainbow."
    tokens = 24
    for name, folder in [(base, None)] + pairs:
        want = generate(cli, model, prompt, tokens, folder)
        whole = c.chat.completions.create(
            model=name, messages=[{"role": "user", "content": prompt}],
            max_tokens=tokens, temperature=0)
        got = whole.choices[0].message.content
        check(got == want, f"{name}: chat completion equals `generate --chat` ({got!r})")
        check(whole.usage.completion_tokens <= tokens and whole.usage.prompt_tokens > 0,
              f"{name}: usage {whole.usage.prompt_tokens}+{whole.usage.completion_tokens}")
        stream = c.chat.completions.create(
            model=name, messages=[{"role": "user", "content": prompt}],
            max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True})
        parts, usage, finish = [], None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                parts.append(ch.delta.content or "")
                finish = ch.finish_reason or finish
        check("".join(parts) == want, f"{name}: streamed chat equals `generate --chat`")
        check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens
              and finish in ("stop", "length"), f"{name}: streamed usage and finish ({finish})")
        plain = c.completions.create(model=name, prompt="The capital of France is",
                                     max_tokens=12, temperature=0)
        want = generate(cli, model, "The capital of France is", 12, folder, chat=False)
        check(plain.choices[0].text == want, f"{name}: completion equals `generate` ({want!r})")
    # Sampling is seeded: the same seed gives the same text.
    kw = dict(model=base, prompt="Once upon a time", max_tokens=16, temperature=0.9, top_p=0.9)
    a = c.completions.create(seed=7, **kw).choices[0].text
    b = c.completions.create(seed=7, **kw).choices[0].text
    check(a == b, "a seed repeats a sampled answer")
    stop = c.completions.create(model=base, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0,
                                stop=[" 7"])
    check(" 7" not in stop.choices[0].text and stop.choices[0].finish_reason == "stop",
          f"a stop string ends the text before it ({stop.choices[0].text!r})")
    try:
        c.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "x"}])
        fail("an unknown model is refused")
    except APIStatusError as e:
        check(e.status_code == 404 and e.body["code"] == "model_not_found",
              "an unknown model: 404 model_not_found")


async def one(c, model, prompt, tokens):
    """A streamed greedy completion: (text, new tokens, seconds)."""
    start = time.monotonic()
    stream = await c.completions.create(model=model, prompt=prompt, max_tokens=tokens,
                                        temperature=0, stream=True,
                                        stream_options={"include_usage": True})
    parts, used = [], 0
    async for chunk in stream:
        if chunk.usage:
            used = chunk.usage.completion_tokens
        for ch in chunk.choices:
            parts.append(ch.text or "")
    return "".join(parts), used, time.monotonic() - start


def requests_of(names):
    prompts = ["The quick brown fox", "Hello, world", "abc", "0123456789", "PEFT Studio serves",
               "Once upon a time", "To be or not", "x"]
    return [(names[i % len(names)], prompts[i % len(prompts)], 24 + 8 * (i % 5))
            for i in range(len(names) * len(prompts))]


async def hammer(url, seconds, clients, work, expected):
    """`clients` concurrent clients taking requests round-robin for `seconds`."""
    c = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    latencies, tokens, errors, wrong = [], 0, [], []
    end = time.monotonic() + seconds
    started = time.monotonic()

    async def worker(k):
        nonlocal tokens
        i = k
        while time.monotonic() < end:
            model, prompt, n = work[i % len(work)]
            i += clients
            try:
                text, used, secs = await one(c, model, prompt, n)
            except Exception as e:  # noqa: BLE001 - every failure counts
                errors.append(repr(e))
                continue
            latencies.append(secs)
            tokens += used
            if expected is not None and text != expected[(model, prompt, n)]:
                wrong.append((model, prompt, n, text))

    await asyncio.gather(*(worker(k) for k in range(clients)))
    elapsed = time.monotonic() - started
    await c.close()
    return latencies, tokens / elapsed, errors, wrong


def load(url, serial_url, seconds, clients, *names):
    seconds, clients = float(seconds), int(clients)
    work = requests_of(list(names))
    c = client(url)
    expected = {}
    for model, prompt, n in work:
        r = c.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
        expected[(model, prompt, n)] = r.choices[0].text
    lat, rate, errors, wrong = asyncio.run(hammer(url, seconds, clients, work, expected))
    check(not errors, f"{len(lat)} streamed answers, no errors ({errors[:3]})")
    check(not wrong, f"every greedy answer equals its single-request answer ({wrong[:2]})")
    q = statistics.quantiles(lat, n=100)
    print(f"batched: clients={clients} requests={len(lat)} p50_s={q[49]:.3f} p99_s={q[98]:.3f} "
          f"tokens_per_s={rate:.1f}", flush=True)
    slat, srate, serrors, _ = asyncio.run(hammer(serial_url, seconds / 2, clients, work, None))
    check(not serrors, f"one at a time: {len(slat)} answers, no errors")
    sq = statistics.quantiles(slat, n=100) if len(slat) > 1 else [slat[0]] * 99
    print(f"one at a time: requests={len(slat)} p50_s={sq[49]:.3f} p99_s={sq[98]:.3f} "
          f"tokens_per_s={srate:.1f}", flush=True)
    print(f"serve load batched/one_at_a_time tokens_per_s={rate / max(srate, 1e-9):.2f}", flush=True)


def raw(url, data, read=True, timeout=30):
    """Sends raw bytes; returns (status, body) of the answer."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    if not read:
        return s
    answer = b""
    try:
        while True:
            got = s.recv(65536)
            if not got:
                break
            answer += got
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def post(path, body, host="x"):
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def hostile(url):
    c = client(url)
    name = c.models.list().data[0].id

    def good():
        r = c.completions.create(model=name, prompt="still there?", max_tokens=4, temperature=0)
        return r.usage.completion_tokens > 0

    big = b'{"model": "' + name.encode() + b'", "prompt": "' + b"a" * (10 << 20) + b'"}'
    status, body = raw(url, post("/v1/completions", big))
    check(status in (413, 0), f"a 10 MB body: {status} (413, or the connection closed)")
    check(good(), "the next good request is answered")
    status, body = raw(url, post("/v1/completions", b'{"model": "' + name.encode() + b'", "prompt": "\xff\xfe"}'))
    check(status == 400 and json.loads(body)["error"]["param"] == "body", f"invalid UTF-8: {status}")
    status, body = raw(url, post("/v1/completions", json.dumps(
        {"model": name, "prompt": "x", "max_tokens": -5}).encode()))
    check(status == 400 and json.loads(body)["error"]["param"] == "max_tokens",
          f"negative max_tokens: {status}")
    status, body = raw(url, post("/v1/completions", json.dumps(
        {"model": name, "prompt": "x", "max_tokens": 10 ** 9}).encode()))
    check(status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded",
          f"max_tokens past the context: {status}")
    status, body = raw(url, post("/v1/chat/completions", b'{"model": 3}'))
    check(status == 400, f"a field of the wrong type: {status} {body[:120]!r}")
    # 500 connections at once, each starting a request; every one is answered or shed.
    socks = []
    for _ in range(500):
        try:
            socks.append(raw(url, post("/v1/completions", json.dumps(
                {"model": name, "prompt": "hi", "max_tokens": 2, "temperature": 0}).encode()),
                read=False, timeout=120))
        except OSError as e:
            fail(f"connection refused at {len(socks)}: {e}")
    statuses = []
    for s in socks:
        head = b""
        try:
            while b"\r\n" not in head:
                got = s.recv(4096)
                if not got:
                    break
                head += got
        except OSError:
            pass
        s.close()
        statuses.append(int(head.split()[1]) if head.startswith(b"HTTP/") else 0)
    shed = sum(1 for st in statuses if st == 503)
    check(all(st in (200, 503) for st in statuses),
          f"500 simultaneous connections: {statuses.count(200)} answered, {shed} shed (503)")
    check(good(), "the next good request is answered")
    # A client that never reads a long stream, and one that leaves mid-stream.
    idle = raw(url, post("/v1/completions", json.dumps(
        {"model": name, "prompt": "never read", "max_tokens": 400, "stream": True}).encode()),
        read=False)
    gone = raw(url, post("/v1/completions", json.dumps(
        {"model": name, "prompt": "leaving", "max_tokens": 400, "stream": True}).encode()),
        read=False)
    gone.recv(100)
    gone.close()
    check(good(), "with a client that never reads and one gone mid-stream, a good request is answered")
    idle.close()
    check(good(), "and after they are gone")


if __name__ == "__main__":
    {"clients": clients, "load": load, "hostile": hostile}[sys.argv[1]](*sys.argv[2:])
