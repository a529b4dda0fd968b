#!/usr/bin/env bash
# Device time is short, so GPU sessions only execute: this builds, on a CPU machine, everything
# a GPU check needs into one archive, and runs it on the GPU machine.
#
#   scripts/gpu_kit.sh build     # here: target/gpu-kit.tar.gz (release binaries with
#                                # --features cuda, the GPU test binaries, the golden fixtures)
#   scripts/gpu_kit.sh test      # on the GPU machine, from the repository root, with
#                                # target/gpu-kit.tar.gz carried: unpacks, runs doctor and every
#                                # GPU test (kernels vs CPU references, end to end vs the CPU
#                                # backend and the official fixtures)
#   scripts/gpu_kit.sh bench LLAMAGEN_CHECKOUT OUT   # on the GPU machine: scripts/gpu_bench.sh
#                                # with the kit's binaries
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kit="$here/target/gpu-kit"
case "${1:-}" in
build)
  rm -rf "$kit" && mkdir -p "$kit/bin" "$kit/tests" "$kit/golden"
  cargo build --release --features cuda --manifest-path "$here/Cargo.toml"
  cp "$here/target/release/llamagen" "$here/target/release/llamagen-compile" "$kit/bin/"
  # Test binaries that exercise the GPU (their `gpu` cases skip without one).
  cargo test --release --features cuda --no-run --message-format=json \
    --manifest-path "$here/Cargo.toml" --workspace \
    --test cuda_gpt_kernels --test cuda_sampler --test cuda_vq_kernels --test cuda_emu \
    --test cuda_nvrtc --test cuda_backend 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$kit/tests"
  strip "$kit"/bin/* "$kit"/tests/*
  cp -r "$here/../shared/golden/tiny-c2i" "$kit/golden/"
  tar -C "$here/target" -czf "$here/target/gpu-kit.tar.gz" gpu-kit
  ls -la "$here/target/gpu-kit.tar.gz" "$kit"/bin "$kit"/tests
  ;;
test)
  tar -C "$here/target" -xzf "$here/target/gpu-kit.tar.gz"
  "$kit/bin/llamagen" doctor
  export LLAMAGEN_GOLDEN="$kit/golden/tiny-c2i"
  status=0
  for t in "$kit"/tests/*; do
    echo "== $(basename "$t")"
    # A build without cuda-emu: the emulator's cases are absent, the GPU ones run.
    "$t" --test-threads=1 --nocapture || status=1
  done
  exit $status
  ;;
bench)
  tar -C "$here/target" -xzf "$here/target/gpu-kit.tar.gz"
  BIN="$kit/bin" bash "$here/scripts/gpu_bench.sh" "${2:?checkout}" "${3:?out dir}"
  ;;
*)
  echo "usage: $0 build | test | bench LLAMAGEN_CHECKOUT OUT" >&2
  exit 2
  ;;
esac
