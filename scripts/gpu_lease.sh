#!/usr/bin/env bash
# Everything one GPU lease should run, in one call, each step under its own time limit, so a
# 15-minute device budget gives the tests, the tables and a profile even when a step hangs.
# Build first, here, on a CPU machine: `scripts/gpu_kit.sh build`, then carry
# target/gpu-kit.tar.gz and (optional) the official code as `git archive`s unpacked into a
# git-ignored folder of the checkout.
#
# Usage (on the GPU machine, from the checkout): scripts/gpu_lease.sh OUT [LLAMAGEN_CODE] [VAR_CODE]
#   LLAMAGEN_CODE: FoundationVision/LlamaGen's autoregressive/models, utils and
#   tokenizer/tokenizer_image/vq_model.py (the LlamaGen table is skipped without it);
#   VAR_CODE: FoundationVision/VAR's models, dist.py and utils (the VAR table likewise).
#   env: TEST_S (180), BENCH_S (220), NCU_S (45, twice), VAR_S (90): each step's limit in seconds,
#   together under the device's 600 s per call; MODELS (GPT-B), INT8_MODELS (GPT-B),
#   SKIP_COMPILE (1: no torch.compile run). GPT-XL's rows need a second call (MODELS=GPT-XL).
# Writes at most 8 files into OUT (what a lease sends back): summary.txt (each step's exit
# status and the tables), results.tar.gz (every log and JSON line), ncu-cublas.csv, ncu-own.csv.
set -uo pipefail
out=${1:?usage: $0 OUT [LLAMAGEN_CODE] [VAR_CODE]}
llamagen=${2:-}
var=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
mkdir -p "$out" "$work/logs"
summary="$out/summary.txt"
: >"$summary"
export PYTHONUNBUFFERED=1

# step NAME SECONDS CMD...: runs CMD with a limit, its output in logs/NAME.log, status in summary.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$work/logs/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(($(date +%s) - start)) s (limit $limit s)" | tee -a "$summary"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; } \
  | tee -a "$summary"
tar -C "$here/target" -xzf "$here/target/gpu-kit.tar.gz"
bin="$here/target/gpu-kit/bin"

# 1. Every GPU test from the kit (fixtures linked from this checkout); warms the kernel cache.
step tests "${TEST_S:-180}" bash "$here/scripts/gpu_kit.sh" test "$work/kit"
grep -E "^(== |test result|failures:|    [a-z_:]+$)" "$work/logs/tests.log" >>"$summary"

# 2. The LlamaGen table: official eager (and torch.compile) vs ours, fp16 and int8 rows.
if [ -n "$llamagen" ]; then
  step bench "${BENCH_S:-220}" env BIN="$bin" MODELS="${MODELS:-GPT-B}" \
    INT8_MODELS="${INT8_MODELS-GPT-B}" SKIP_COMPILE="${SKIP_COMPILE:-}" bash "$here/scripts/gpu_bench.sh" "$llamagen" "$work/bench"
  sed -n '/^model /,$p' "$work/logs/bench.log" >>"$summary"
fi

# 3. One GPT-B decode step under Nsight Compute, without the graph so each kernel is its own
#    launch: time and DRAM bytes per kernel name, per step (steps = sample_rows launches), once
#    with each decode GEMM (cuBLAS + rms_norm/swiglu launches, and ours with them fused).
bundle="$work/bench/GPT-B/bundle-fp16"
if command -v ncu >/dev/null && [ -d "$bundle" ]; then
  for gemm in cublas own; do
    step "ncu-$gemm" "${NCU_S:-45}" env LLAMAGEN_CUDA_DECODE_GEMM=$gemm ncu --launch-skip 4000 \
      --launch-count 400 --csv --page raw --print-units base \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      "$bin/llamagen" bench --bundle "$bundle" --backend cuda --no-cuda-graph \
      --labels 207,360,387,974,88,979,417,279 --runs 1
    cp "$work/logs/ncu-$gemm.log" "$out/ncu-$gemm.csv"
    echo "decode GEMM $gemm:" >>"$summary"
    python3 - "$out/ncu-$gemm.csv" <<'PY' >>"$summary"
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows:
    sys.exit("no ncu rows")
head = rows[0]; col = {n: i for i, n in enumerate(head)}
agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
def num(r, n):
    try: return float(r[col[n]].replace(",", ""))
    except (KeyError, ValueError): return 0.0
for r in rows[2:]:
    a = agg[r[col["Kernel Name"]][:60]]
    a[0] += 1; a[1] += num(r, "gpu__time_duration.sum")
    a[2] += num(r, "dram__bytes_read.sum") + num(r, "dram__bytes_write.sum")
steps = max(1, sum(v[0] for k, v in agg.items() if k.startswith("sample_rows")))
print(f"ncu, per decode step ({steps} steps in the window; time in us, DRAM in MB):")
for k, (n, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{t / steps / 1e3:10.1f} us {n / steps:6.1f} launches {b / steps / 1e6:8.1f} MB  {k}")
PY
  done
fi

# 4. The VAR table, d16 only (d30's random weights take longer than a lease has).
if [ -n "$var" ]; then
  step var "${VAR_S:-90}" env BIN="$bin" DEPTHS=16 bash "$here/scripts/gpu_bench_var.sh" \
    "$var" "$work/var"
  tail -n 12 "$work/logs/var.log" >>"$summary"
fi

tar -C "$work" -czf "$out/results.tar.gz" logs $(cd "$work" && ls -d bench/results.jsonl var/results.jsonl 2>/dev/null)
echo "done: $summary, $out/results.tar.gz" | tee -a "$summary"
