#!/usr/bin/env bash
# The issue-4 latency table on one NVIDIA GPU, side by side in one run: the official LlamaGen
# PyTorch code (eager, and torch.compile as its README offers; bf16, its sample_c2i.py default)
# and llamagen-rs --backend cuda (fp16 bundle), GPT-B/L/XL + VQ-16 at 384 px, 8 labels with
# cfg 4 (batch 16), the same random official-format weights on both sides. Also checks greedy
# tokens of the CUDA backend against the CPU backend on the same bundle (GPT-B). For the models
# of INT8_MODELS, also an int8 bundle (weight-only, kept int8 on the device, our W8A16 GEMM):
# its decode step and GEMM weight bytes beside the fp16 bundle's. The fp16 bundle also runs with
# the previous decode attention (LLAMAGEN_CUDA_ATTENTION=separate: rotary_kv_write +
# decode_attention) beside the default fused split-K kernel, in the same run.
# Every fp16 bundle is also timed with our decode GEMM (LLAMAGEN_CUDA_DECODE_GEMM=own: W16A16,
# RMSNorm and SwiGLU fused) beside cuBLAS's (the default), for issue 8's comparison.
#
# Usage: scripts/gpu_bench.sh LLAMAGEN_REPO_CHECKOUT OUT_DIR
#   env: MODELS (default "GPT-B GPT-L GPT-XL"), BIN (default target/release; binaries built
#   with --features cuda), SKIP_COMPILE=1 (no torch.compile run), SKIP_CPU_PARITY=1,
#   INT8_MODELS (default "GPT-B GPT-XL"; empty: no int8 rows).
# Needs python3 with torch on a GPU machine; prints one JSON line per measurement into
# OUT_DIR/results.jsonl and a table at the end.
set -euo pipefail
repo=${1:?usage: $0 LLAMAGEN_REPO_CHECKOUT OUT_DIR}
out=${2:?usage: $0 LLAMAGEN_REPO_CHECKOUT OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$here/target/release}
labels=207,360,387,974,88,979,417,279
mkdir -p "$out"
results="$out/results.jsonl"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
"$bin/llamagen" doctor | tee "$out/doctor.txt"

for model in ${MODELS:-GPT-B GPT-L GPT-XL}; do
  work="$out/$model"
  mkdir -p "$work"
  base=(python3 "$here/scripts/official_baseline.py" --llamagen-repo "$repo" --out "$work"
        --gpt-model "$model" --image-size 384 --labels "$labels" --device cuda --precision bf16)
  "${base[@]}" | tail -n 1 | tee -a "$results"
  if [ -z "${SKIP_COMPILE:-}" ]; then
    "${base[@]}" --reuse-ckpt --compile --skip-vq | tail -n 1 | tee -a "$results"
  fi
  "$bin/llamagen-compile" --gpt-model "$model" --gpt-ckpt "$work/gpt.pt" --vq-model VQ-16 \
    --vq-ckpt "$work/vq.pt" --image-size 384 --precision fp16 --out "$work/bundle-fp16" >/dev/null
  for graph in "" --no-cuda-graph; do
    LLAMAGEN_CUDA_ATTENTION=fused LLAMAGEN_CUDA_DECODE_GEMM=cublas "$bin/llamagen" bench --bundle "$work/bundle-fp16" --backend cuda $graph --labels "$labels" \
      --runs 3 --json | python3 -c "import json,sys; r=json.load(sys.stdin); r['cuda_graph']='$graph'==''; print(json.dumps(r))" \
      | tee -a "$results"
  done
  # The previous attention pair on the same bundle (graph on): the fused kernel's gain.
  LLAMAGEN_CUDA_ATTENTION=separate "$bin/llamagen" bench --bundle "$work/bundle-fp16" --backend cuda --labels "$labels" \
    --runs 3 --json | python3 -c "import json,sys; r=json.load(sys.stdin); r['cuda_graph']=True; print(json.dumps(r))" \
    | tee -a "$results"
  # Our decode GEMM on the same bundle (graph on, fused attention): against cuBLAS.
  LLAMAGEN_CUDA_ATTENTION=fused LLAMAGEN_CUDA_DECODE_GEMM=own "$bin/llamagen" bench --bundle "$work/bundle-fp16" --backend cuda \
    --labels "$labels" --runs 3 --json | python3 -c "import json,sys; r=json.load(sys.stdin); r['cuda_graph']=True; print(json.dumps(r))" \
    | tee -a "$results"
  if [[ " ${INT8_MODELS-GPT-B GPT-XL} " == *" $model "* ]]; then
    "$bin/llamagen-compile" --gpt-model "$model" --gpt-ckpt "$work/gpt.pt" --vq-model VQ-16 \
      --vq-ckpt "$work/vq.pt" --image-size 384 --precision int8 --out "$work/bundle-int8" >/dev/null
    "$bin/llamagen" bench --bundle "$work/bundle-int8" --backend cuda --labels "$labels" \
      --runs 3 --json | python3 -c "import json,sys; r=json.load(sys.stdin); r['cuda_graph']=True; print(json.dumps(r))" \
      | tee -a "$results"
  fi
  if [ "$model" = GPT-B ] && [ -z "${SKIP_CPU_PARITY:-}" ]; then
    for b in cuda cpu; do
      "$bin/llamagen" generate --bundle "$work/bundle-fp16" --backend "$b" --labels "$labels" \
        --top-k 1 --out "$work/greedy-$b" >/dev/null
    done
    python3 - "$work" <<'PY' | tee -a "$results"
import json, sys, numpy as np
w = sys.argv[1]
a, b = np.load(f"{w}/greedy-cuda/tokens.npy"), np.load(f"{w}/greedy-cpu/tokens.npy")
first = [int(np.argmax(r != s)) if (r != s).any() else None for r, s in zip(a, b)]
print(json.dumps({"greedy_cuda_vs_cpu": float((a == b).mean()), "first_difference_per_image": first}))
PY
  fi
done

# The device sampler alone (issue 8: 47 us per step on an H200 before): criterion's device time
# per sampling launch, 8 request rows with CFG over 16384 logits, from the GPU kit's bench.
sampler_bench=${SAMPLER_BENCH:-$bin/../bench/device_sampler}
if [ -x "$sampler_bench" ]; then
  "$sampler_bench" --bench --noplot 2>&1 | tee "$out/device_sampler.txt" | python3 -c '
import json, re, sys
name = None
for line in sys.stdin:
    m = re.match(r"^(device_sampler\S*)", line)
    if m:
        name = m.group(1)
    t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
    if t and name:
        us = float(t.group(1)) * {"ps": 1e-6, "ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}[t.group(2)]
        print(json.dumps({"bench": name, "us_per_step": us}))
' | tee -a "$results"
else
  echo "no device sampler bench at $sampler_bench (scripts/gpu_kit.sh build makes it)"
fi

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    if "impl" in r:
        m = r["gpt_model"]; by.setdefault(m, {})["compile" if r["compile"] else "eager"] = r
    elif "backend" in r:
        m = r["model"].split(" + ")[0]
        key = ("ours_int8" if r["precision"] == "int8" else "ours_separate" if r.get("attention") == "separate"
               else "ours_own" if r.get("decode_gemm") == "own"
               else "ours" if r["cuda_graph"] else "ours_nograph")
        by.setdefault(m, {})[key] = r
print(f"{'model':8}{'official eager':>16}{'torch.compile':>15}{'llamagen-rs':>13}{'vs eager':>10}{'vs compile':>12}{'ms/token':>10}{'GB/s':>8}{'no graph':>10}")
for m, r in by.items():
    e = r.get("eager", {}); c = r.get("compile", {}); o = r.get("ours", {})
    te = e.get("gpt_ms", float("nan")) + (e.get("vq_ms") or 0)
    tc = c.get("gpt_ms", float("nan")) + (e.get("vq_ms") or 0)
    to = o.get("gpt_ms", float("nan")) + o.get("vq_ms", float("nan"))
    ng = r.get("ours_nograph", {})
    print(f"{m:8}{te:14.0f}ms{tc:13.0f}ms{to:11.0f}ms{te / to:9.1f}x{tc / to:11.1f}x"
          f"{o.get('decode_ms_per_token_mean', float('nan')):10.3f}{o.get('decode_gb_per_s') or float('nan'):8.0f}"
          f"{ng.get('decode_ms_per_token_mean', float('nan')):10.3f}")
print("GB/s: fp16 weights + KV cache read per decode step (arithmetic) / measured step time;"
      " compare with the GPU's copy bandwidth (about 3000 GB/s on an H100 SXM).")
print()
print(f"{'model':8}{'fp16 ms/token':>15}{'int8 ms/token':>15}{'int8/fp16':>11}"
      f"{'fp16 GEMM MB':>14}{'int8 GEMM MB':>14}{'fp16 GB/s':>11}{'int8 GB/s':>11}")
nan = float("nan")
for m, r in by.items():
    o, q = r.get("ours", {}), r.get("ours_int8")
    if not q:
        continue
    fo, fq = o.get("decode_ms_per_token_mean", nan), q.get("decode_ms_per_token_mean", nan)
    print(f"{m:8}{fo:15.3f}{fq:15.3f}{fq / fo:10.2f}x"
          f"{o.get('gemm_weight_mb') or nan:14.1f}{q.get('gemm_weight_mb') or nan:14.1f}"
          f"{o.get('decode_gb_per_s') or nan:11.0f}{q.get('decode_gb_per_s') or nan:11.0f}")
print("int8: weight-only int8 bundle, int8 GEMM weights + f32 per-channel scales on the device"
      " (our W8A16 GEMM); GB/s counts the bytes the device actually holds.")
print()
print(f"{'model':8}{'fused ms/token':>16}{'separate ms/token':>19}{'fused/separate':>16}{'fused p50':>11}{'separate p50':>14}")
for m, r in by.items():
    o, s = r.get("ours", {}), r.get("ours_separate")
    if not s:
        continue
    fo, so = o.get("decode_ms_per_token_mean", nan), s.get("decode_ms_per_token_mean", nan)
    print(f"{m:8}{fo:16.3f}{so:19.3f}{fo / so:15.2f}x"
          f"{o.get('decode_ms_per_token_p50') or nan:11.3f}{s.get('decode_ms_per_token_p50') or nan:14.3f}")
print("decode attention (fp16 bundle, CUDA graph): fused = one split-K launch per layer (rotary,"
      " cache write, attention, merge); separate = rotary_kv_write + decode_attention.")
print()
print(f"{'model':8}{'cublas ms/token':>17}{'own ms/token':>14}{'own/cublas':>12}{'cublas GB/s':>13}{'own GB/s':>10}")
for m, r in by.items():
    o, w = r.get("ours", {}), r.get("ours_own")
    if not w:
        continue
    fo, fw = o.get("decode_ms_per_token_mean", nan), w.get("decode_ms_per_token_mean", nan)
    print(f"{m:8}{fo:17.3f}{fw:14.3f}{fw / fo:11.2f}x"
          f"{o.get('decode_gb_per_s') or nan:13.0f}{w.get('decode_gb_per_s') or nan:10.0f}")
print("fp16 bundle, CUDA graph: cuBLAS GEMMs + rms_norm/swiglu launches vs our decode GEMM"
      " (LLAMAGEN_CUDA_DECODE_GEMM=own: W16A16, RMSNorm and SwiGLU fused; decode_gemm in the JSON).")
PY
