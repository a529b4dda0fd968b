#!/usr/bin/env bash
# Installs what the project needs besides the Rust toolchain: the ONNX Runtime shared library
# (from the `onnxruntime` wheel on PyPI, loaded at run time) and numpy + onnx for the tests that
# cross-check our files with the official onnx checker. Idempotent and quick when already done.
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -c "import onnxruntime, numpy, onnx" 2>/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check "onnxruntime==1.31.1" numpy onnx
fi
"$PY" -c "import onnxruntime; print('onnxruntime', onnxruntime.__version__)"
