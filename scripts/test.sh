#!/usr/bin/env bash
# The README's test command: set-up, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets
