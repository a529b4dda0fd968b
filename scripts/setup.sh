#!/usr/bin/env bash
# Installs what the project needs besides the Rust toolchain: the ONNX Runtime shared library
# (from the `onnxruntime` wheel on PyPI, loaded at run time), numpy + onnx + pyyaml for the tests
# that cross-check our files with the official onnx checker and drive a bundle from Python, NVRTC (the `nvidia-cuda-nvrtc` wheel,
# ~90 MB, found in site-packages at run time: the CUDA kernels compile without a GPU) and a C++
# compiler for the `cuda-emu` feature's kernel emulator. Idempotent and quick when already done.
set -euo pipefail
PY=${PYTHON:-python3}
pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check "$@"
}
if ! "$PY" -c "import onnxruntime, numpy, onnx, yaml" 2>/dev/null; then
  pip_install "onnxruntime==1.31.1" numpy onnx pyyaml
fi
"$PY" -c "import onnxruntime; print('onnxruntime', onnxruntime.__version__)"

# NVRTC 13.0 matches the CUDA 13.0 bindings (cudarc feature cuda-13000); any libnvrtc the
# runtime already finds (LLAMAGEN_CUDA_LIB_DIR, a system toolkit, another wheel) works too.
nvrtc_lib() {
  "$PY" - <<'PY'
import glob, os, site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()]
for d in dirs:
    for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"):
        hits = sorted(glob.glob(os.path.join(d, sub, "libnvrtc.so.*")))
        if hits:
            print(hits[0])
            sys.exit(0)
sys.exit(1)
PY
}
if ! nvrtc_lib >/dev/null; then
  pip_install "nvidia-cuda-nvrtc==13.0.88"
fi
echo "nvrtc $(nvrtc_lib)"

if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
  else
    echo "error: no C++ compiler (c++ or g++) for the cuda-emu feature; install g++ (as root: apt-get install -y g++)" >&2
    exit 1
  fi
fi
echo "c++ $(command -v c++ || command -v g++)"
