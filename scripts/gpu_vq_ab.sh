#!/usr/bin/env bash
# The CUDA VQ decoder's 3x3 convolutions, A/B on one bundle and GPU: 3 cuBLAS GEMMs each
# (LLAMAGEN_CUDA_VQ_CONV=cublas, the default) against one tensor-core implicit-GEMM launch
# (=mma), alternating, at batch 8 and 64 (cfg 4, top-k 900, top-p 0.95), and the images of both
# compared (greedy, batch 8): a row per run with the VQ decode's ms.
#
# Usage: scripts/gpu_vq_ab.sh BUNDLE OUT_DIR   (env BIN: the binaries' folder; ROUNDS, 2)
set -euo pipefail
bundle=${1:?usage: $0 BUNDLE OUT_DIR}
out=${2:?usage: $0 BUNDLE OUT_DIR}
bin=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
mkdir -p "$out"
labels_of() { python3 -c "import sys; print(','.join(str((i * 131 + 7) % 1000) for i in range(int(sys.argv[1]))))" "$1"; }
for round in $(seq "${ROUNDS:-2}"); do
  for batch in 8 64; do
    for conv in cublas mma; do
      LLAMAGEN_CUDA_VQ_CONV=$conv "$bin/llamagen" bench --bundle "$bundle" --backend cuda \
        --labels "$(labels_of "$batch")" --cfg-scale 4 --top-k 900 --top-p 0.95 --runs 3 --json |
        python3 -c "import json,sys; r=json.load(sys.stdin); print(f'round $round batch $batch $conv: vq {r[\"vq_ms\"]:.1f} ms, total {r[\"total_ms\"]:.1f} ms')"
    done
  done
done
for conv in cublas mma; do
  rm -rf "$out/greedy-$conv"
  LLAMAGEN_CUDA_VQ_CONV=$conv "$bin/llamagen" generate --bundle "$bundle" --backend cuda \
    --labels "$(labels_of 8)" --cfg-scale 4 --top-k 1 --out "$out/greedy-$conv" >/dev/null
done
python3 - "$out" <<'PY'
import sys
import numpy as np
from PIL import Image
out = sys.argv[1]
for i in range(8):
    a = np.asarray(Image.open(f"{out}/greedy-cublas/{i:04d}.png"), dtype=np.float64)
    b = np.asarray(Image.open(f"{out}/greedy-mma/{i:04d}.png"), dtype=np.float64)
    mse = ((a - b) ** 2).mean()
    psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
    print(f"image {i}: mma vs cublas PSNR {psnr:.1f} dB, max |diff| {np.abs(a - b).max():.0f}")
PY
