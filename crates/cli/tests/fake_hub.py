"""A stand-in for the Hugging Face hub's HTTP API, for the download tests (real HTTP, real files).

    python3 fake_hub.py ROOT LOG [--cut FILE:BYTES] [--gated ORG/NAME]

Serves every folder ROOT/ORG/NAME as a model repository (`/api/models/ORG/NAME/revision/REV`
lists its files, `/ORG/NAME/resolve/REV/FILE` serves them with Range support) and every folder
ROOT/datasets/ORG/NAME as a dataset repository (the same under `/api/datasets/` and `/datasets/`). `--cut` ends the
first full transfer of FILE after BYTES bytes (an interrupted download); `--gated` answers 401
for that repository. Prints the port on stdout; logs each request line and Range header to LOG.
"""

import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, LOG = sys.argv[1], sys.argv[2]
ARGS = sys.argv[3:]
CUT = {}
GATED = set()
for flag, value in zip(ARGS[::2], ARGS[1::2]):
    if flag == "--cut":
        name, count = value.rsplit(":", 1)
        CUT[name] = int(count)
    elif flag == "--gated":
        GATED.add(value)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with open(LOG, "a") as log:
            log.write(f"{self.path} range={self.headers.get('Range')}\n")
        parts = self.path.lstrip("/").split("/")
        kind = "models"
        if parts[0] == "datasets" or (parts[0] == "api" and parts[1:2] == ["datasets"]):
            kind = "datasets"
            parts = [p for i, p in enumerate(parts) if not (p == "datasets" and i <= 1)]
        if parts[0] == "api" and len(parts) >= 6 and parts[1] == "models":
            repo = f"{parts[2]}/{parts[3]}"
        elif parts[0] == "api" and len(parts) >= 5:
            repo = f"{parts[1]}/{parts[2]}"
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo = f"{parts[0]}/{parts[1]}"
        else:
            return self.send(404, b"not found")
        if repo in GATED:
            return self.send(401, b'{"error": "Access to this model is restricted."}')
        folder = os.path.join(ROOT, repo) if kind == "models" else os.path.join(ROOT, "datasets", repo)
        if not os.path.isdir(folder):
            return self.send(404, b'{"error": "Repository not found"}')
        if parts[0] == "api":
            files = sorted(os.path.relpath(os.path.join(d, f), folder)
                           for d, _, fs in os.walk(folder) for f in fs)
            body = json.dumps({"sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}).encode()
            return self.send(200, body, [("Content-Type", "application/json")])
        name = "/".join(parts[4:])
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return self.send(404, b"entry not found")
        data = open(path, "rb").read()
        start = 0
        end = len(data) - 1
        spec = self.headers.get("Range", "")
        if spec.startswith("bytes="):
            a, _, b = spec[6:].partition("-")
            start = int(a or 0)
            end = int(b) if b else end
        headers = [("x-repo-commit", COMMIT), ("etag", '"' + hashlib.sha256(data).hexdigest() + '"'),
                   ("Content-Range", f"bytes {start}-{end}/{len(data)}")]
        body = data[start:end + 1]
        if name in CUT and start == 0 and len(body) > 1:
            keep = CUT.pop(name)
            self.send_response(206)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:keep])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send(206 if spec else 200, body, headers)


server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
server.handle_error = lambda request, address: None  # the cut connection is the point
print(server.server_address[1], flush=True)
server.serve_forever()
