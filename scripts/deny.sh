#!/usr/bin/env bash
# Supply chain: dependency licences (permissive only), duplicate versions (listed as warnings)
# and crate sources, with cargo-deny offline (deny.toml). Installs cargo-deny once (~7 min).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
cargo deny --offline check licenses bans sources
