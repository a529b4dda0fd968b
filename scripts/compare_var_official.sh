#!/usr/bin/env bash
# Side-by-side on this machine: the official VAR PyTorch code and llamagen-rs, VAR-d16 + the
# released VQVAE shapes, the same weights (official-format var.pth / vae.pth written by torch),
# the same request (label 207, cfg 4 = batch 2, top-k 900, top-p 0.96, VQVAE decode included),
# the same thread count, back to back.
# Usage: [TORCH_PYTHON=python3] [THREADS=2] [RUNS=3] [LABELS=207] [CFG=4]
#        scripts/compare_var_official.sh VAR_REPO_CHECKOUT [WORKDIR]
# VAR_REPO_CHECKOUT: FoundationVision/VAR with its models/, dist.py and utils/ (never vendored
# here). TORCH_PYTHON must have torch and huggingface_hub (plain `pip install torch huggingface_hub`);
# the ONNX Runtime library comes from scripts/setup.sh. Prints a JSON line per side, a table of
# ratios with peak RSS over the bundle size, and the greedy (top-k 1) token agreement.
set -euo pipefail
repo=${1:?usage: $0 VAR_REPO_CHECKOUT [WORKDIR]}
work=${2:-$(mktemp -d)}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${TORCH_PYTHON:-python3}
labels=${LABELS:-207}
cfg=${CFG:-4}
threads=${THREADS:-2}
runs=${RUNS:-3}
bash "$here/scripts/setup.sh" >/dev/null
cargo build --release --bins --manifest-path "$here/Cargo.toml" -q
bin="$here/target/release"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

official=$("$py" "$here/scripts/var_official_baseline.py" --var-repo "$repo" --out "$work" \
  --labels "$labels" --cfg-scale "$cfg" --top-k 900 --top-p 0.96 --threads "$threads" \
  --runs "$runs" 2>/dev/null | tail -n 1)
echo "official: $official"
rm -rf "$work/bundle" "$work/greedy"
"$bin/llamagen-compile" --var-model d16 --var-ckpt "$work/var.pth" --vae-ckpt "$work/vae.pth" \
  --out "$work/bundle" >/dev/null
ours=$("$bin/llamagen" bench --bundle "$work/bundle" --labels "$labels" --cfg-scale "$cfg" \
  --top-k 900 --top-p 0.96 --threads "$threads" --runs "$runs" --json)
echo "ours: $ours"
"$bin/llamagen" generate --bundle "$work/bundle" --labels "$labels" --cfg-scale "$cfg" \
  --top-k 1 --threads "$threads" --out "$work/greedy" >/dev/null
echo "machine after: load $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$official" "$ours" "$work" <<'PY'
import json, sys
import numpy as np
off, ours, work = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
a = np.load(f"{work}/greedy.tokens.npy")
b = np.load(f"{work}/greedy/tokens.npy")
print(f"{'':32}{'official':>12}{'llamagen-rs':>14}{'speed-up':>10}")
rows = [("generation + decode (ms)", off["total_ms"], ours["total_ms"]),
        ("VQVAE decode (ms)", off["vq_ms"], ours["vq_ms"])]
for name, o, r in rows:
    print(f"{name:32}{o:12.1f}{r:14.1f}{o / r:9.2f}x")
print(f"transformer, 10 scales (ms)     {'':12}{ours['gpt_ms']:14.1f}")
for k in ("scale_ms", "ms_per_scale"):
    if ours.get(k):
        print("per scale (ms): " + ", ".join(f"{x:.0f}" for x in ours[k]))
print(f"peak RSS {ours['peak_rss_mb']:.0f} MB = {ours['peak_rss_mb'] / ours['bundle_mb']:.2f}x "
      f"bundle ({ours['bundle_mb']:.0f} MB)")
print(f"greedy token agreement with the official code: {float((a == b).mean()):.4f} "
      f"({a.shape}; first difference at {int(np.argmax(a != b)) if (a != b).any() else None})")
print(f"torch {off['torch']}, {off['threads']} threads; ours {ours['backend']}, "
      f"batch {ours['batch']} x cfg, {ours['runs']} runs (medians)")
PY
