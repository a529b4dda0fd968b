#!/usr/bin/env bash
# Issue 10's GPU table, side by side in one run on one NVIDIA GPU: the official VAR code
# (fp16 autocast, flash/fused kernels where installed, as its demo runs; VQVAE decode included)
# and llamagen-rs --backend cuda (a bundle of the same random official-format weights), VAR-d16
# and VAR-d30, batch 8 and 64 labels, cfg 4, top-k 900, top-p 0.95. The targets: >= 4x the
# official code at batch 8, >= 2x at batch 64. Also greedy (top-k 1) tokens of both sides.
#
# Usage: scripts/gpu_bench_var.sh VAR_REPO_CHECKOUT OUT_DIR
#   VAR_REPO_CHECKOUT: FoundationVision/VAR's models/, dist.py and utils/ (git archive of them is
#   enough); env: DEPTHS (default "16 30"), BATCHES (default "8 64"), BIN (default
#   target/release, built with --features cuda; scripts/gpu_kit.sh bin/ works), RUNS (3),
#   FP32_DEPTHS (default "30"): depths compiled at fp32 instead of fp16. The CUDA backend
#   computes in f16 from either (an fp32 bundle's weights are converted as they load), and an
#   fp32 compile skips the fp16 bundle's accuracy measurement, which runs the model twice on the
#   CPU: minutes for VAR-d30. Those bundles load without hash verification (--no-verify).
#   GREEDY (default: every batch): the batches whose greedy tokens are compared (each costs a
#   load of the bundle). DEVICE=cpu BACKEND=cpu: a dry run of this script on a machine without a GPU.
# Needs python3 with torch (and huggingface_hub, which var.py imports) on the GPU machine. Prints
# a JSON line per measurement into OUT_DIR/results.jsonl and a table at the end.
set -euo pipefail
repo=${1:?usage: $0 VAR_REPO_CHECKOUT OUT_DIR}
out=${2:?usage: $0 VAR_REPO_CHECKOUT OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$here/target/release}
runs=${RUNS:-3}
threads=$(nproc)
mkdir -p "$out"
results="$out/results.jsonl"
device=${DEVICE:-cuda}
backend=${BACKEND:-cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" ||
  true

stamp() { echo "[$(date -u +%T)] $*"; }
labels_of() { python3 -c "import sys; print(','.join(str((i * 131 + 7) % 1000) for i in range(int(sys.argv[1]))))" "$1"; }
with_depth() { python3 -c "import json,sys; r=json.load(sys.stdin); r['depth']=$1; print(json.dumps(r))"; }
for depth in ${DEPTHS:-16 30}; do
  work="$out/d$depth"
  mkdir -p "$work"
  precision=fp16
  load=()
  for d in ${FP32_DEPTHS-30}; do
    if [ "$d" = "$depth" ]; then precision=fp32; load=(--no-verify); fi
  done
  first=1
  for batch in ${BATCHES:-8 64}; do
    labels=$(labels_of "$batch")
    reuse=(); [ $first = 1 ] || reuse=(--reuse-ckpt)
    stamp "VAR-d$depth batch $batch: official"
    python3 "$here/scripts/var_official_baseline.py" --var-repo "$repo" --out "$work" \
      --depth "$depth" --device "$device" --threads "$threads" --labels "$labels" --cfg-scale 4 \
      --top-k 900 --top-p 0.95 --runs "$runs" "${reuse[@]}" | tail -n 1 | with_depth "$depth" |
      tee -a "$results"
    cp "$work/greedy.tokens.npy" "$work/official-greedy-b$batch.npy"
    cp "$work/greedy_fp32.tokens.npy" "$work/official-greedy-fp32-b$batch.npy" 2>/dev/null || true
    if [ $first = 1 ]; then
      stamp "VAR-d$depth: compile $precision"
      "$bin/llamagen-compile" --var-model "d$depth" --var-ckpt "$work/var.pth" \
        --vae-ckpt "$work/vae.pth" --precision "$precision" --out "$work/bundle" >/dev/null
      first=0
    fi
    stamp "VAR-d$depth batch $batch: ours"
    "$bin/llamagen" bench --bundle "$work/bundle" --backend "$backend" "${load[@]}" --labels "$labels" \
      --cfg-scale 4 --top-k 900 --top-p 0.95 --runs "$runs" --json | with_depth "$depth" |
      tee -a "$results"
    case " ${GREEDY:-${BATCHES:-8 64}} " in *" $batch "*) ;; *) continue ;; esac
    rm -rf "$work/greedy-b$batch"
    "$bin/llamagen" generate --bundle "$work/bundle" --backend "$backend" "${load[@]}" \
      --labels "$labels" --cfg-scale 4 --top-k 1 --out "$work/greedy-b$batch" >/dev/null
  done
  stamp "VAR-d$depth done"
done

python3 - "$results" "$out" <<'PY'
import json, sys
import numpy as np
rows = [json.loads(l) for l in open(sys.argv[1])]
out = sys.argv[2]
off = {(r["depth"], r["batch"]): r for r in rows if r.get("impl") == "official-pytorch"}
ours = {(r["depth"], r["batch"]): r for r in rows if "backend" in r}
print(f"{'model':10}{'batch':>6}{'official ms':>13}{'ours ms':>10}{'(gpt':>8}{'vq)':>7}"
      f"{'speed-up':>10}{'target':>8}{'greedy =':>10}")
for (depth, batch), o in sorted(off.items()):
    r = ours.get((depth, batch))
    if r is None:
        continue
    try:
        a = np.load(f"{out}/d{depth}/official-greedy-b{batch}.npy")
        b = np.load(f"{out}/d{depth}/greedy-b{batch}/tokens.npy")
        same = float((a == b).mean()) if a.shape == b.shape else float("nan")
    except OSError:
        same = float("nan")
    target = 4.0 if batch <= 8 else 2.0
    print(f"VAR-d{depth:<5}{batch:6d}{o['total_ms']:13.1f}{r['total_ms']:10.1f}"
          f"{r.get('gpt_ms', 0):8.1f}{r.get('vq_ms', 0):7.1f}"
          f"{o['total_ms'] / r['total_ms']:9.2f}x{target:7.0f}x{same:10.4f}")

# Greedy agreement by scale: a token that differs changes every later scale's input, so the
# scale where a row first differs says more than the share of equal tokens. The official fp16
# run against its own fp32 run is the yardstick for what fp16 alone does.
patch = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
ends = np.cumsum([p * p for p in patch])
def first_diff(a, b):
    out = []
    for ra, rb in zip(a, b):
        bad = np.nonzero(ra != rb)[0]
        out.append(int(np.searchsorted(ends, bad[0], side="right")) if len(bad) else len(patch))
    return out
print("rows' first differing scale (10 = identical):")
for (depth, batch) in sorted(off):
    base = f"{out}/d{depth}"
    try:
        ours_t = np.load(f"{base}/greedy-b{batch}/tokens.npy")
        o16 = np.load(f"{base}/official-greedy-b{batch}.npy")
    except OSError:
        continue
    pairs = [("ours vs official fp16", ours_t, o16)]
    try:
        o32 = np.load(f"{base}/official-greedy-fp32-b{batch}.npy")
        pairs += [("ours vs official fp32", ours_t, o32), ("official fp16 vs fp32", o16, o32)]
    except OSError:
        pass
    for name, a, b in pairs:
        f = first_diff(a, b)
        print(f"VAR-d{depth} b{batch} {name}: mean {np.mean(f):.2f}, rows identical "
              f"{sum(x == len(patch) for x in f)}/{len(f)}, histogram "
              f"{np.bincount(f, minlength=len(patch) + 1).tolist()}")
PY
