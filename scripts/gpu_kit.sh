#!/usr/bin/env bash
# Device time is short, so GPU sessions only execute: this builds, on a CPU machine, everything
# a GPU check needs into one archive, and runs it on the GPU machine.
#
#   scripts/gpu_kit.sh build     # here: target/gpu-kit.tar.gz (release binaries with
#                                # --features cuda, the GPU test binaries, the model YAMLs)
#   scripts/gpu_kit.sh test [DIR] # on the GPU machine, with target/gpu-kit.tar.gz carried:
#                                # unpacks into DIR (default: a new temporary folder, outside
#                                # the repository), links the checkout's tests/golden into it,
#                                # runs doctor and every GPU test from there (kernels vs CPU
#                                # references, end to end vs the CPU backend and the official
#                                # fixtures); env TESTS="cuda_var cuda_sampler ...": only
#                                # these binaries, in this order
#
# The golden fixtures (~40 MB, mostly checkpoints that do not compress) travel once, as tracked
# files of the checkout the device receives: a kit with its own copy put checkout + kit over the
# device's 64 MiB limit on what travels.
#   scripts/gpu_kit.sh bench LLAMAGEN_CHECKOUT OUT   # on the GPU machine: scripts/gpu_bench.sh
#                                # with the kit's binaries
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kit="$here/target/gpu-kit"
# Copies the executables of cargo's JSON messages (stdin) whose target kind is $1 into $2.
copy_artifacts() {
  python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == [sys.argv[1]]:
        shutil.copy(m["executable"], sys.argv[2] + "/" + m["target"]["name"])
' "$1" "$2"
}
case "${1:-}" in
build)
  rm -rf "$kit" && mkdir -p "$kit/bin" "$kit/tests/bin"
  cargo build --release --features cuda --manifest-path "$here/Cargo.toml"
  cp "$here/target/release/llamagen" "$here/target/release/llamagen-compile" "$kit/bin/"
  # Test binaries that exercise the GPU (their `gpu` cases skip without one).
  cargo test --release --features cuda --no-run --message-format=json \
    --manifest-path "$here/Cargo.toml" --workspace \
    --test cuda_gpt_kernels --test cuda_sampler --test cuda_vq_kernels --test cuda_emu \
    --test cuda_nvrtc --test cuda_backend --test cuda_decode_gemm --test cuda_var_kernels \
    --test cuda_var --test cuda_var_attention --test cuda_split_attention 2>/dev/null |
    copy_artifacts test "$kit/tests/bin"
  # The device sampler's criterion bench (gpu_bench.sh runs it: us per sampling step).
  mkdir -p "$kit/bench"
  cargo bench --features driver --no-run --message-format=json \
    --manifest-path "$here/Cargo.toml" -p llamagen-cuda --bench device_sampler 2>/dev/null |
    copy_artifacts bench "$kit/bench"
  strip "$kit"/bin/* "$kit"/tests/bin/* "$kit"/bench/*
  # The test data the binaries look for (llamagen_test_support::paths), in the layout of the
  # repository: the small model YAMLs here; `test` links the checkout's tests/golden in.
  cp -r "$here/tests/fixtures" "$kit/tests/"
  tar -C "$here/target" -czf "$here/target/gpu-kit.tar.gz" gpu-kit
  ls -la "$here/target/gpu-kit.tar.gz" "$kit"/bin "$kit"/tests/bin
  ;;
test)
  dir=${2:-$(mktemp -d)}
  mkdir -p "$dir"
  tar -C "$dir" -xzf "$here/target/gpu-kit.tar.gz"
  ln -sfn "$here/tests/golden" "$dir/gpu-kit/tests/golden"
  cd "$dir/gpu-kit"
  ./bin/llamagen doctor
  status=0
  names=${TESTS:-$(ls tests/bin)}
  for name in $names; do
    t=tests/bin/$name
    echo "== $name"
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
  echo "usage: $0 build | test [DIR] | bench LLAMAGEN_CHECKOUT OUT" >&2
  exit 2
  ;;
esac
