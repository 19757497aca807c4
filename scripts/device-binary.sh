#!/usr/bin/env bash
# The CLI for a GPU machine, built here (no GPU needed) and compressed to fit the 64 MiB a
# device run may carry: target/device/peft-studio-cli.xz (~12 MB; 78 MB stripped).
#   bash scripts/device-binary.sh [COMPUTE_CAP]      (default 90: H100 / H200)
# On the GPU machine:
#   xz -dk target/device/peft-studio-cli.xz && bench/device-check --cli target/device/peft-studio-cli
# The binary links CUDA 13 (libcudart.so.13, libcublas.so.13, libcurand.so.10); the device
# check finds them in the Python's `nvidia` packages.
set -euo pipefail
cd "$(dirname "$0")/.."
cuda_home=$(bash scripts/cuda-toolkit.sh)
CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH" CUDA_COMPUTE_CAP="${1:-90}" \
  CARGO_TARGET_DIR="$PWD/target/cuda-check" cargo build --release --locked -p peft-studio-cli --features cuda
mkdir -p target/device
strip -o target/device/peft-studio-cli target/cuda-check/release/peft-studio-cli
xz -T2 -9 -f target/device/peft-studio-cli
ls -l target/device/peft-studio-cli.xz
