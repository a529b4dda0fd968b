#!/usr/bin/env bash
# Side-by-side: the official LlamaGen PyTorch code and llamagen-rs on the same machine, the same
# weights (official-format checkpoints written by torch), the same request, back to back.
# Usage: scripts/compare_official.sh LLAMAGEN_REPO_CHECKOUT [WORKDIR]
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
PY
