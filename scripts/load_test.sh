#!/usr/bin/env bash
# Load test of `llamagen serve` on the loopback address: GPT-B at 64 px (16 tokens) with random
# weights, 64 concurrent clients for SECONDS (default 60) with batching (--max-batch 64), then
# the same with one request at a time (--max-batch 1). Prints p50/p99 latency, images/s, errors
# (must be 0) and the server's RSS at the start and the end of each run, then the ratio.
#
#   scripts/load_test.sh [SECONDS]     (env: CLIENTS=64, MAX_BATCH=64, BUNDLE=target/load-test/gpt-b-64)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-60}
CLIENTS=${CLIENTS:-64}
MAX_BATCH=${MAX_BATCH:-64}
BUNDLE=${BUNDLE:-target/load-test/gpt-b-64}

cargo build --release --bin llamagen --bin llamagen-compile
cargo build --release -p llamagen-serve --example load_test
if [ ! -f "$BUNDLE/bundle.yaml" ]; then
    mkdir -p "$(dirname "$BUNDLE")"
    target/release/llamagen-compile --gpt-model GPT-B --random-weights --seed 0 \
        --image-size 64 --out "$BUNDLE"
fi

run() {
    local max_batch=$1 log
    log=$(mktemp)
    target/release/llamagen serve --bundle "$BUNDLE" --addr 127.0.0.1:0 --max-batch "$max_batch" \
        --max-queue 1024 >"$log" 2>&1 &
    local pid=$!
    local addr=""
    for _ in $(seq 1 600); do
        addr=$(sed -n 's|^listening on http://||p' "$log")
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log"; return 1; }
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "server did not start"; cat "$log"; kill "$pid"; return 1; }
    echo "--max-batch $max_batch:" >&2
    local status=0
    target/release/examples/load_test --addr "$addr" --clients "$CLIENTS" \
        --seconds "$SECONDS_PER_RUN" --server-pid "$pid" || status=$?
    kill -TERM "$pid"
    wait "$pid" || status=$?
    rm -f "$log"
    return $status
}

batched=$(run "$MAX_BATCH")
echo "$batched"
single=$(run 1)
echo "$single"
ips() { sed -n 's/.*images\/s \([0-9.]*\).*/\1/p' <<<"$1"; }
awk -v b="$(ips "$batched")" -v s="$(ips "$single")" \
    'BEGIN { printf "batching / one-at-a-time: %.2fx images/s\n", b / s }'
