#!/usr/bin/env bash
# Side-by-side on this machine: the official VAR PyTorch code and llamagen-rs, VAR-d16 + the
# released VQVAE shapes, the same weights (official-format var.pth / vae.pth written by torch),
# the same request (label 207, cfg 4 = batch 2, top-k 900, top-p 0.96, VQVAE decode included),
# the same thread count, back to back.
# Usage: [TORCH_PYTHON=python3] [THREADS=2] [RUNS=3] [LABELS=207] [CFG=4]
#        [VARIANTS="fp32 int8-dynamic"] scripts/compare_var_official.sh VAR_REPO_CHECKOUT [WORKDIR]
# VARIANTS: the bundles to time against the one official run: fp32, fp16, int8 (weight-only),
# int8-dynamic (int8 GEMMs with activations quantized at run time), int8-dynamic-convs (that, and
# the decoder's convolutions on int8 activations, calibrated at compile time: a slow compile).
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
variants=${VARIANTS:-fp32}
bash "$here/scripts/setup.sh" >/dev/null
cargo build --release --bins --manifest-path "$here/Cargo.toml" -q
bin="$here/target/release"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

official=$("$py" "$here/scripts/var_official_baseline.py" --var-repo "$repo" --out "$work" \
  --labels "$labels" --cfg-scale "$cfg" --top-k 900 --top-p 0.96 --threads "$threads" \
  --runs "$runs" 2>/dev/null | tail -n 1)
echo "official: $official"
ours_all=()
for v in $variants; do
  case $v in
    fp32|fp16|int8) flags=(--precision "$v") ;;
    int8-dynamic) flags=(--precision int8 --int8-activations dynamic) ;;
    int8-dynamic-convs) flags=(--precision int8 --int8-activations dynamic-convs) ;;
    *) echo "unknown variant $v (fp32, fp16, int8, int8-dynamic, int8-dynamic-convs)" >&2; exit 2 ;;
  esac
  rm -rf "$work/bundle-$v" "$work/greedy-$v"
  "$bin/llamagen-compile" --var-model d16 --var-ckpt "$work/var.pth" --vae-ckpt "$work/vae.pth" \
    "${flags[@]}" --out "$work/bundle-$v" >/dev/null
  ours=$("$bin/llamagen" bench --bundle "$work/bundle-$v" --labels "$labels" --cfg-scale "$cfg" \
    --top-k 900 --top-p 0.96 --threads "$threads" --runs "$runs" --json)
  echo "ours ($v): $ours"
  "$bin/llamagen" generate --bundle "$work/bundle-$v" --labels "$labels" --cfg-scale "$cfg" \
    --top-k 1 --threads "$threads" --out "$work/greedy-$v" >/dev/null
  ours_all+=("$v=$ours")
done
echo "machine after: load $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$official" "$work" "${ours_all[@]}" <<'PY'
import json, sys
import numpy as np
off, work = json.loads(sys.argv[1]), sys.argv[2]
variants = [a.split("=", 1) for a in sys.argv[3:]]
a = np.load(f"{work}/greedy.tokens.npy")
print(f"{'':14}{'total ms':>10}{'vs official':>12}{'VQVAE ms':>10}{'vs official':>12}"
      f"{'transformer ms':>16}{'peak RSS MB':>12}{'x bundle':>9}{'greedy =':>9}")
print(f"{'official':14}{off['total_ms']:10.0f}{'':12}{off['vq_ms']:10.0f}")
for name, text in variants:
    r = json.loads(text)
    b = np.load(f"{work}/greedy-{name}/tokens.npy")
    print(f"{name:14}{r['total_ms']:10.0f}{off['total_ms'] / r['total_ms']:11.2f}x"
          f"{r['vq_ms']:10.0f}{off['vq_ms'] / r['vq_ms']:11.2f}x{r['gpt_ms']:16.0f}"
          f"{r['peak_rss_mb']:12.0f}{r['peak_rss_mb'] / r['bundle_mb']:9.2f}"
          f"{float((a == b).mean()):9.4f}")
    print(f"{'':14}per scale (ms): " + ", ".join(f"{x:.0f}" for x in r.get("scale_ms") or []))
print(f"torch {off['torch']}, {off['threads']} threads; {len(variants)} bundles, batch 1 x cfg, "
      f"medians of {off['runs']} runs; greedy = top-k 1 tokens equal to the official code's")
PY
