#!/usr/bin/env bash
# The README's end-to-end command: set-up, build, compile GPT-B + VQ-16 (random weights, 256 px),
# generate four images and benchmark. Everything lands in ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release
./target/release/llamagen-compile --gpt-model GPT-B --vq-model VQ-16 --image-size 256 \
  --random-weights --seed 0 --out out/gpt-b-256
./target/release/llamagen inspect --bundle out/gpt-b-256
./target/release/llamagen generate --bundle out/gpt-b-256 --labels 207,360,387,974 --seed 0 \
  --out out/images
./target/release/llamagen bench --bundle out/gpt-b-256 --labels 207 --runs 3
