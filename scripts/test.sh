#!/usr/bin/env bash
# The README's test command: set-up, then every test of the workspace with both CUDA features
# (GPU tests skip with a message without a GPU; the kernel emulator's tests run on the CPU),
# then every CUDA kernel file compiled by NVRTC for the GPUs we target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets --features cuda,cuda-emu
# `--profile test` with the same features reuses the build of the tests above.
cargo run --quiet --profile test --features cuda,cuda-emu --bin llamagen -- doctor --compile-kernels
