#!/usr/bin/env bash
# A CUDA 13.0 toolkit made from the package registry's wheels, for building the studio with
# `--features cuda` on a machine without one (building needs no GPU):
#   export CUDA_HOME=$(bash scripts/cuda-toolkit.sh) PATH="$CUDA_HOME/bin:$PATH"
#   CUDA_COMPUTE_CAP=90 cargo build --release --locked -p peft-studio-cli --features cuda
# The folder holds nvcc, the headers, NVVM, the libraries under unversioned names, and a
# stub libcuda.so to link against (the driver provides the real one where the binary runs).
# All wheels are pinned to 13.0: a newer nvcc emits PTX that a 13.0 driver cannot load.
# Cached under $PEFT_STUDIO_CACHE (default ~/.cache/peft-studio); prints the folder.
set -euo pipefail
cache="${PEFT_STUDIO_CACHE:-$HOME/.cache/peft-studio}"
home="$cache/cuda-13.0"
if [[ -x "$home/bin/nvcc" && -f "$home/lib64/stubs/libcuda.so" ]]; then
  echo "$home"
  exit 0
fi
venv="$cache/cuda-wheels"
[[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
  "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" \
  "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==13.0.*" >&2
cu=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
[[ -x "$cu/bin/nvcc" ]] || { echo "nvcc is missing from $cu" >&2; exit 1; }
rm -rf "$home"
mkdir -p "$home/lib64/stubs"
for d in bin include nvvm; do ln -s "$cu/$d" "$home/$d"; done
for lib in cudart cublas cublasLt curand nvrtc; do
  found=$(ls "$cu"/lib/lib$lib.so.* 2>/dev/null | head -1)
  [[ -n "$found" ]] || { echo "lib$lib.so is missing from $cu/lib" >&2; exit 1; }
  ln -s "$found" "$home/lib64/lib$lib.so"
done
# The stub: every driver entry point cuda.h declares, each failing with
# CUDA_ERROR_NOT_INITIALIZED, under the driver's soname.
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cc -E -P -I"$cu/include" -x c "$cu/include/cuda.h" 2>/dev/null |
  grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u |
  sed 's/.*/int &(void) { return 3; }/' >"$stub/cuda_stub.c"
cc -shared -fPIC -o "$home/lib64/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$stub/cuda_stub.c"
echo "$home"
