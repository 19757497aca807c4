#!/usr/bin/env bash
# Sets up and runs every test: formatting, clippy with warnings denied, the whole
# workspace's tests (engine, catalog, app, CLI, desktop shell), the web UI's unit tests, the
# desktop end-to-end suite under Xvfb, and the interop harness against PyTorch + PEFT, the
# adapters library and llama.cpp.
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
# The fused kernels once more on gemm's products instead of OpenBLAS's (which the run above
# uses where install-deps put it): both must match the composed reference.
PEFT_STUDIO_BLAS=off cargo test --locked -p peft-studio-engine --test engine fused
# The fuzz targets build and survive their corpus and a few hundred mutations (fuzzing proper,
# instrumented: fuzz/run).
cargo build --locked -p peft-studio-fuzz
bash fuzz/smoke
# The web UI's unit tests, then the end-to-end suite against one release build of the
# studio (and the CLI that prepares its home) through the real webview.
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npx vitest run)
cargo build --release --locked -p peft-studio -p peft-studio-cli --features peft-studio/custom-protocol
bash tests/desktop/run.sh
# Exports load in the reference libraries and compute the studio's logits, and theirs load in
# the studio (its Python environment is made once, outside the clone).
PEFT_STUDIO_CLI="$PWD/target/release/peft-studio-cli" bash tests/interop/run
echo "all checks passed in $(( $(date +%s) - start )) s"
