#!/usr/bin/env bash
# End-to-end tests of the desktop studio: a release build driven through tauri-driver and
# WebKitWebDriver under Xvfb, in a fresh studio home holding a small model. Screenshots of
# every screen go to target/e2e-screenshots. Expects the release binaries built with
# `--features peft-studio/custom-protocol` (scripts/test.sh builds them).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${DISPLAY:-}" ]]; then
  exec xvfb-run -a -s "-screen 0 1280x900x24" bash "$0" "$@"
fi
root=$PWD
app=$root/target/release/peft-studio
cli=$root/target/release/peft-studio-cli
work=$(mktemp -d)
export PEFT_STUDIO_HOME=$work/home
export PEFT_STUDIO_CATALOG=$work/home/catalog.sqlite
"$cli" demo --out "$work/demo" 2>/dev/null
"$cli" models import "$work/demo/model" --name tiny-demo >/dev/null
# Line 1 is fine; line 2 has a number for text; line 3 is not JSON.
printf '{"text": "fine"}\n{"text": 5}\nnot json\n{"prompt": "a"}\n' >"$work/broken.jsonl"
# Typed paths in the work folder are accepted as in a user's trusted data folder; the dataset
# in `outside` has to be picked in the native dialog first.
export PEFT_STUDIO_TRUSTED_FOLDERS=$work
outside=$(mktemp -d)
printf '{"text": "picked in a dialog"}\n' >"$outside/picked.jsonl"

command -v tauri-driver >/dev/null || cargo install tauri-driver --locked --quiet
port=4444
tauri-driver --port $port >"$work/driver.log" 2>&1 &
driver=$!
# SIGTERM, not SIGKILL: tauri-driver then stops WebKitWebDriver too.
trap 'kill -TERM $driver 2>/dev/null; wait $driver 2>/dev/null; rm -rf "$work" "$outside"' EXIT
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$port/status" >/dev/null && break
  sleep 0.2
done
shots=$root/target/e2e-screenshots
rm -rf "$shots"
cd ui
APP=$app WEBDRIVER=http://127.0.0.1:$port SHOTS=$shots BROKEN=$work/broken.jsonl EXPORTS=$work/exports MODEL_DIR=$work/demo/model OUTSIDE_DATASET=$outside/picked.jsonl DATASET=$work/demo/dataset.jsonl \
  node e2e/run.mjs
