#!/usr/bin/env bash
# Everything one GPU lease should run, in one call, each step under its own time limit, so a
# 15-minute device budget gives the tests, the tables and a profile even when a step hangs.
# Build first, here, on a CPU machine: `scripts/gpu_kit.sh build`, then carry
# target/gpu-kit.tar.gz and (optional) the official code as `git archive`s unpacked into a
# git-ignored folder of the checkout.
#
# Usage (on the GPU machine, from the checkout): scripts/gpu_lease.sh OUT [LLAMAGEN_CODE] [VAR_CODE]
#   LLAMAGEN_CODE: FoundationVision/LlamaGen's autoregressive/models, utils and
#   tokenizer/tokenizer_image/vq_model.py (the LlamaGen table and its profile are skipped
#   without it; pass "" to skip them);
#   VAR_CODE: FoundationVision/VAR's models, dist.py and utils (the VAR tables likewise).
#   Order: the VAR tests, the VAR-d16 table, the VAR-d30 table, the VQ convolution A/B
#   (scripts/gpu_vq_ab.sh), the VAR-d16 profile, the other tests, then the LlamaGen table and
#   profile.
#   env: VAR_TEST_S (90), VAR16_S (160), VAR30_S (210), VQ_AB_S (90), NCU_VAR_S (60), TEST_S
#   (120), BENCH_S (220), NCU_S (45, twice): each step's limit in seconds, all cut to LEASE_S
#   (570) in total, under the device's 600 s per call; MODELS (GPT-B), INT8_MODELS (GPT-B), SKIP_COMPILE (1: no
#   torch.compile run). GPT-XL's rows need a second call (MODELS=GPT-XL).
# Writes at most 8 files into OUT (what a lease sends back): summary.txt (each step's exit
# status and the tables), results.tar.gz (every log and JSON line), ncu-var.csv, ncu-var64.csv,
# ncu-cublas.csv, ncu-own.csv.
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
# A step never runs past LEASE_S (default 570) seconds after the script's start: its limit is
# cut to what is left, and with under 15 s left it is skipped; steps named in SKIP_STEPS
# ("var30 tests", say) are skipped.
began=$(date +%s)
step() {
  local name=$1 limit=$2 start rc left
  shift 2
  start=$(date +%s)
  case " ${SKIP_STEPS:-} " in *" $name "*)
    echo "$name: skipped (SKIP_STEPS)" | tee -a "$summary"
    return
    ;;
  esac
  left=$((${LEASE_S:-570} - (start - began)))
  if [ "$left" -lt 15 ]; then
    echo "$name: skipped, $left s of LEASE_S left" | tee -a "$summary"
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  timeout --kill-after=10 "$limit" "$@" >"$work/logs/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(($(date +%s) - start)) s (limit $limit s)" | tee -a "$summary"
}

# ncu_table CSV PER: ncu's raw CSV as time, launches and DRAM MB per kernel name, summed per
# unit, where a unit is PER sample_rows launches (1: a GPT decode step; 0: the whole window).
ncu_table() {
  python3 - "$1" "$2" <<'PY'
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
samples = sum(v[0] for k, v in agg.items() if k.startswith("sample_rows"))
per = int(sys.argv[2])
units = max(1, samples // per) if per else 1
total = sum(v[1] for v in agg.values())
names = [r[col["Kernel Name"]] for r in rows[2:]]
first_vq = next((i for i, n in enumerate(names) if n.startswith("vq_")), None)
if first_vq is not None:  # the window's split at its first VQ decoder kernel
    t = [num(r, "gpu__time_duration.sum") for r in rows[2:]]
    print(f"ncu: before the first vq_ launch {sum(t[:first_vq]) / 1e6:.2f} ms ({first_vq} launches), "
          f"from it {sum(t[first_vq:]) / 1e6:.2f} ms ({len(t) - first_vq} launches)")
print(f"ncu: {sum(v[0] for v in agg.values())} launches, {total / 1e6:.2f} ms of kernels, "
      f"{samples} sample_rows; per {'unit' if per else 'window'} ({units}): us, launches, DRAM MB")
for k, (n, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{t / units / 1e3:10.1f} us {n / units:7.1f} launches {b / units / 1e6:9.1f} MB  {k}")
PY
}
ncu_metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; } \
  | tee -a "$summary"
tar -C "$here/target" -xzf "$here/target/gpu-kit.tar.gz"
bin="$here/target/gpu-kit/bin"

var_tests="cuda_var_attention cuda_var cuda_var_kernels cuda_sampler cuda_nvrtc"
other_tests=$(cd "$here/target/gpu-kit/tests/bin" && ls | grep -vxF "$(echo $var_tests | tr ' ' '\n')")
tests() { # tests NAME LIMIT BINARIES: a kit test run, its results in the summary
  step "$1" "$2" env TESTS="$3" bash "$here/scripts/gpu_kit.sh" test "$work/kit"
  grep -E "^(== |test result|failures:|    [a-z_:]+$)" "$work/logs/$1.log" >>"$summary" 2>/dev/null
}

# 1. VAR's GPU tests (parity with the official goldens on the device); warms the kernel cache.
tests var-tests "${VAR_TEST_S:-90}" "$var_tests"

# 2. The VAR tables: official code vs ours, d16 (fp16 bundle) then d30 (fp32 bundle: same f16
#    compute, no CPU accuracy run), batch 8 and 64.
if [ -n "$var" ]; then
  for depth in 16 30; do
    limit=VAR${depth}_S
    default=$([ $depth = 16 ] && echo 160 || echo 210)
    greedy=$([ $depth = 16 ] && echo "8 64" || echo 8)
    step "var$depth" "${!limit:-$default}" env BIN="$bin" DEPTHS=$depth GREEDY="$greedy" \
      bash "$here/scripts/gpu_bench_var.sh" "$var" "$work/var"
    grep -E "^\[|^VAR-d|^model|^rows" "$work/logs/var$depth.log" >>"$summary" 2>/dev/null
  done
  # Every measurement so far, a line each (the tables above print only when a step completes).
  [ -f "$work/var/results.jsonl" ] && python3 - "$work/var/results.jsonl" <<'PY' >>"$summary"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"d{r['depth']} b{r['batch']} {r.get('impl', r.get('backend'))}: total {r['total_ms']:.1f} ms, "
          f"vq {r.get('vq_ms', 0):.1f} ms, gpt {r.get('gpt_ms', 0):.1f} ms, load {r.get('load_ms', 0):.0f} ms")
PY
fi

# 2a. The VQ decoder's 3x3 convolutions, cuBLAS vs the tensor-core kernel, on the d16 bundle.
if [ -d "$work/var/d16/bundle" ]; then
  step vq-ab "${VQ_AB_S:-90}" env BIN="$bin" bash "$here/scripts/gpu_vq_ab.sh" \
    "$work/var/d16/bundle" "$work/vq-ab"
  grep -E "^(round|image)" "$work/logs/vq-ab.log" >>"$summary" 2>/dev/null
fi

# 2b. The VAR-d16 loop under Nsight Compute, without the graph: launches NCU_VAR_SKIP (1400) to
#     + NCU_VAR_LAUNCHES (1300) of the warm-up run (one run is ~1970 transformer launches, then
#     the VQ decode): its last scales and its VQ decode, time and DRAM bytes per kernel name. At
#     batch 8 as the default runs, and at batch 64 with the tensor-core VQ convolutions.
vbundle="$work/var/d16/bundle"
if command -v ncu >/dev/null && [ -d "$vbundle" ]; then
  for run in "ncu-var 8 cublas" "ncu-var64 64 mma"; do
    set -- $run
    labels=$(python3 -c "print(','.join(str((i * 131 + 7) % 1000) for i in range($2)))")
    step "$1" "${NCU_VAR_S:-60}" env LLAMAGEN_CUDA_VQ_CONV="$3" ncu \
      --launch-skip "${NCU_VAR_SKIP:-1400}" --launch-count "${NCU_VAR_LAUNCHES:-1300}" --csv \
      --page raw --print-units base --metrics $ncu_metrics "$bin/llamagen" bench \
      --bundle "$vbundle" --backend cuda --no-cuda-graph --labels "$labels" --cfg-scale 4 \
      --top-k 900 --top-p 0.95 --runs 1
    cp "$work/logs/$1.log" "$out/$1.csv"
    echo "$1: batch $2, VQ convolutions $3" >>"$summary"
    ncu_table "$out/$1.csv" 0 >>"$summary" 2>&1
  done
fi

# 3. Every other GPU test from the kit.
tests tests "${TEST_S:-120}" "$other_tests"

# 4. The LlamaGen table: official eager (and torch.compile) vs ours, fp16 and int8 rows.
if [ -n "$llamagen" ]; then
  step bench "${BENCH_S:-220}" env BIN="$bin" MODELS="${MODELS:-GPT-B}" \
    INT8_MODELS="${INT8_MODELS-GPT-B}" SKIP_COMPILE="${SKIP_COMPILE:-}" bash "$here/scripts/gpu_bench.sh" "$llamagen" "$work/bench"
  sed -n '/^model /,$p' "$work/logs/bench.log" >>"$summary"
fi


# 5. One GPT-B decode step under Nsight Compute, without the graph so each kernel is its own
#    launch: time and DRAM bytes per kernel name, per step (steps = sample_rows launches), once
#    with each decode GEMM (cuBLAS + rms_norm/swiglu launches, and ours with them fused).
bundle="$work/bench/GPT-B/bundle-fp16"
if command -v ncu >/dev/null && [ -d "$bundle" ]; then
  for gemm in cublas own; do
    step "ncu-$gemm" "${NCU_S:-45}" env LLAMAGEN_CUDA_DECODE_GEMM=$gemm ncu --launch-skip 4000 \
      --launch-count 400 --csv --page raw --print-units base --metrics $ncu_metrics \
      "$bin/llamagen" bench --bundle "$bundle" --backend cuda --no-cuda-graph \
      --labels 207,360,387,974,88,979,417,279 --runs 1
    cp "$work/logs/ncu-$gemm.log" "$out/ncu-$gemm.csv"
    echo "decode GEMM $gemm:" >>"$summary"
    ncu_table "$out/ncu-$gemm.csv" 1 >>"$summary" 2>&1
  done
fi

tar -C "$work" -czf "$out/results.tar.gz" logs $(cd "$work" && ls -d bench/results.jsonl var/results.jsonl 2>/dev/null)
echo "done: $summary, $out/results.tar.gz" | tee -a "$summary"
