#!/usr/bin/env bash
# Sets up and runs every test: formatting, clippy with warnings denied, the whole
# workspace's tests (engine, catalog, app, CLI, desktop shell), the web UI's unit tests, the
# desktop end-to-end suite under Xvfb, the interop harness against PyTorch + PEFT, the
# adapters library and llama.cpp, the server against the `openai` client, and `eval` against
# PyTorch and lm-evaluation-harness.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f "$HOME/.cargo/env" ]] && source "$HOME/.cargo/env"
bash scripts/install-deps.sh --tests

export CARGO_TERM_COLOR=never
# A fresh CI clone gains nothing from incremental caches, which cost gigabytes of disk.
export CARGO_INCREMENTAL=0
start=$(date +%s)
# The real SmolLM2 and Gemma 3 270M the GGUF reference tests compare against transformers with.
PEFT_STUDIO_SMOLLM2_GGUF="$(bash scripts/fetch-smollm2.sh)"
PEFT_STUDIO_GEMMA3_GGUF="$(bash scripts/fetch-gemma3.sh)"
export PEFT_STUDIO_SMOLLM2_GGUF PEFT_STUDIO_GEMMA3_GGUF PEFT_STUDIO_REQUIRE_REAL_MODEL=1
# Tests never touch the user's studio home (model library, token cache).
PEFT_STUDIO_HOME="$(mktemp -d)"
export PEFT_STUDIO_HOME
phase() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
# One release build serves everything: clippy (which shares its build scripts and proc-macros),
# the workspace's tests (dependencies compiled once, at the optimisation the app ships with),
# the fuzz targets, and the binaries the end-to-end suite and the interop harness drive. Every
# cargo call names the same packages, profile and features, so none recompiles what another
# built.
release=(--release --locked --workspace --features peft-studio/custom-protocol)
cargo fmt --all -- --check
phase "clippy"
cargo clippy "${release[@]}" --all-targets -- -D warnings
phase "build"
cargo build "${release[@]}" --all-targets
phase "tests"
cargo test "${release[@]}"
# The fused kernels once more on gemm's products instead of OpenBLAS's (which the run above
# uses where install-deps put it): both must match the composed reference.
PEFT_STUDIO_BLAS=off cargo test "${release[@]}" --test engine fused
# The composed ops alone, the reference (in f32 and bf16), on the engine's tests.
PEFT_STUDIO_FUSED=off cargo test "${release[@]}" --test engine
# The device-generic layer, as a GPU runs it, on the CPU, with every CPU-only kernel
# refused: the engine's tests prove what a GPU would run, and that it never reaches one.
PEFT_STUDIO_FUSED=generic cargo test "${release[@]}" --test engine
# bf16 through the fused kernels with its weights widened to f32, as on CPUs without
# AVX-512-BF16 (where the CPU has it, the runs above multiply bf16 as it is).
PEFT_STUDIO_BF16_PRODUCTS=off cargo test "${release[@]}" --test engine -- fused bf16
# On CPUs with AMX, bf16 through the AVX-512-BF16 dot products instead of the tiles (where
# the CPU has no AMX, the runs above already did, if they beat widening here): `on` takes
# them without timing them against widening.
PEFT_STUDIO_AMX=off PEFT_STUDIO_BF16_PRODUCTS=on cargo test "${release[@]}" --test engine -- fused bf16
# The fuzz targets survive their corpus and a few hundred mutations (fuzzing proper,
# instrumented: fuzz/run).
phase "fuzz smoke"
bash fuzz/smoke target/release
# The web UI's unit tests, then the end-to-end suite through the real webview.
phase "ui"
(cd ui && npm ci --no-audit --no-fund --loglevel=error && npx vitest run)
phase "desktop e2e"
bash tests/desktop/run.sh
# Exports load in the reference libraries and compute the studio's logits, and theirs load in
# the studio (its Python environment is made once, outside the clone).
phase "interop"
PEFT_STUDIO_CLI="$PWD/target/release/peft-studio-cli" bash tests/interop/run
# The server with the official `openai` client: answers equal to `generate`, hostile requests,
# 32 streaming clients mixing three adapters (batched against one request at a time).
phase "serve"
PEFT_STUDIO_CLI="$PWD/target/release/peft-studio-cli" bash tests/serve/run
# `eval` against PyTorch (perplexity) and lm-evaluation-harness (multiple choice).
phase "eval"
PEFT_STUDIO_CLI="$PWD/target/release/peft-studio-cli" bash tests/eval/run
# Runs handed to accelerate (2 CPU processes: DDP, DeepSpeed ZeRO-2 and ZeRO-3) train the
# studio's losses, are followed into the catalog, killed, stopped and resumed.
phase "handoff"
PEFT_STUDIO_CLI="$PWD/target/release/peft-studio-cli" bash tests/handoff/run
# The GPU build compiles (candle's CUDA kernels through nvcc, for an H100's sm_90), with a
# CUDA toolkit made from the package registry's wheels and cached outside the clone; no GPU
# is needed to build. About 6 minutes from cold on two cores.
phase "cuda build check"
cuda_home=$(bash scripts/cuda-toolkit.sh)
CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH" CUDA_COMPUTE_CAP=90 \
  CARGO_TARGET_DIR="$PWD/target/cuda-check" cargo check --release --locked -p peft-studio-cli --features cuda
echo "all checks passed in $(( $(date +%s) - start )) s"
