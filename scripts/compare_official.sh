#!/usr/bin/env bash
# Side-by-side: the official LlamaGen PyTorch code and llamagen-rs on the same machine, the same
# weights (official-format checkpoints written by torch), the same request, back to back.
# Usage: [PRECISIONS="fp32 fp16 int8"] scripts/compare_official.sh LLAMAGEN_REPO_CHECKOUT [WORKDIR]
# Needs torch (pip install torch) besides scripts/setup.sh; prints a JSON line per side and a
# table of ratios, and checks that greedy tokens agree.
set -euo pipefail
repo=${1:?usage: $0 LLAMAGEN_REPO_CHECKOUT [WORKDIR]}
work=${2:-$(mktemp -d)}
here=$(cd "$(dirname "$0")/.." && pwd)
labels=${LABELS:-207}
size=${IMAGE_SIZE:-256}
bash "$here/scripts/setup.sh" >/dev/null
cargo build --release --manifest-path "$here/Cargo.toml" -q
bin="$here/target/release"

official=$(python3 "$here/scripts/official_baseline.py" --llamagen-repo "$repo" --out "$work" \
  --labels "$labels" --image-size "$size" 2>/dev/null | tail -n 1)
echo "official: $official"
"$bin/llamagen-compile" --gpt-model GPT-B --gpt-ckpt "$work/gpt.pt" --vq-model VQ-16 \
  --vq-ckpt "$work/vq.pt" --image-size "$size" --out "$work/bundle"
ours=$("$bin/llamagen" bench --bundle "$work/bundle" --labels "$labels" --runs 3 --json)
echo "ours: $ours"
"$bin/llamagen" generate --bundle "$work/bundle" --labels "$labels" --top-k 1 --out "$work/greedy" >/dev/null
# Lower precisions (compiled with calibration: accuracy vs fp32 lands in their bundle.yaml).
for p in ${PRECISIONS:-}; do
  [ "$p" = fp32 ] && continue
  "$bin/llamagen-compile" --gpt-model GPT-B --gpt-ckpt "$work/gpt.pt" --vq-model VQ-16 \
    --vq-ckpt "$work/vq.pt" --image-size "$size" --precision "$p" --out "$work/bundle-$p" >/dev/null
  "$bin/llamagen" bench --bundle "$work/bundle-$p" --labels "$labels" --runs 3 --json > "$work/bench-$p.json"
  echo "ours $p: $(cat "$work/bench-$p.json")"
done

python3 - "$official" "$ours" "$work" <<'PY'
import json, sys, numpy as np
off, ours, work = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
a = np.load(f"{work}/greedy.tokens.npy"); b = np.load(f"{work}/greedy/tokens.npy")
agree = float((a == b).mean())
print(f"{'':28}{'official':>12}{'llamagen-rs':>14}{'speed-up':>10}")
rows = [("generation loop (ms)", off["gpt_ms"], ours["gpt_ms"]),
        ("per token (ms)", off["ms_per_token"], ours["gpt_ms"] / (a.shape[1])),
        ("VQ decode (ms)", off["vq_ms"], ours["vq_ms"])]
for name, o, r in rows:
    print(f"{name:28}{o:12.1f}{r:14.1f}{o / r:9.2f}x")
print(f"decode step p50 / p99 (ms)  {ours['decode_ms_per_token_p50']:.1f} / {ours['decode_ms_per_token_p99']:.1f}")
print(f"peak RSS {ours['peak_rss_mb']:.0f} MB = {ours['peak_rss_mb'] / ours['bundle_mb']:.2f}x bundle ({ours['bundle_mb']:.0f} MB)")
print(f"greedy token agreement with the official code: {agree:.4f} ({a.shape})")
import os, yaml
for p in ("fp16", "int8"):
    f = f"{work}/bench-{p}.json"
    if not os.path.exists(f):
        continue
    b = json.load(open(f))
    acc = yaml.safe_load(open(f"{work}/bundle-{p}/bundle.yaml"))["precision_details"]["accuracy_vs_fp32"]
    print(f"{p}: decode step {b['decode_ms_per_token_p50']:.1f} ms ({b['decode_ms_per_token_p50'] / ours['decode_ms_per_token_p50']:.2f}x fp32), "
          f"gpt {b['gpt_ms']:.0f} ms, vq {b['vq_ms']:.0f} ms, bundle {b['bundle_mb']:.0f} MB ({b['bundle_mb'] / ours['bundle_mb']:.2f}x), "
          f"peak {b['peak_rss_mb']:.0f} MB; vs fp32: cosine min {acc['logits_cosine_min']:.6f}, "
          f"mean {acc['logits_cosine_mean']:.6f}, agreement {acc['token_agreement']:.3f}, PSNR {acc['image_psnr_db']:.1f} dB")
PY
