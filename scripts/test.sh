#!/usr/bin/env bash
# Sets up and runs every test: formatting, clippy with warnings denied, then the whole
# workspace's tests (engine, CLI, desktop shell).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f "$HOME/.cargo/env" ]] && source "$HOME/.cargo/env"
bash scripts/install-deps.sh

export CARGO_TERM_COLOR=never
# A fresh CI clone gains nothing from incremental caches, which cost gigabytes of disk.
export CARGO_INCREMENTAL=0
start=$(date +%s)
# The real SmolLM2 the GGUF reference test compares against transformers with.
PEFT_STUDIO_SMOLLM2_GGUF="$(bash scripts/fetch-smollm2.sh)"
export PEFT_STUDIO_SMOLLM2_GGUF PEFT_STUDIO_REQUIRE_REAL_MODEL=1
# Tests never touch the user's studio home (model library, token cache).
PEFT_STUDIO_HOME="$(mktemp -d)"
export PEFT_STUDIO_HOME
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
echo "all checks passed in $(( $(date +%s) - start )) s"
