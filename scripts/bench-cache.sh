#!/usr/bin/env bash
# Benchmark (not a test) of the response cache: a bare hyper server as the floor, then
# `wafer serve` answering functions/hello from its cache (hit), running it for every request
# (miss: looked up, run, not kept), and a hit through `wafer cache` as a sidecar in front of
# the gateway; all in one run, driven by wrk at the same concurrency. Prints requests/s, p50
# and p99, the share of the floor's throughput and the p50 a hit adds to the floor.
#
#   scripts/bench-cache.sh                      # 10 s per target, 2 wrk threads, 32 connections
#   BENCH_DURATION=30s BENCH_CONNECTIONS=64 scripts/bench-cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${BENCH_DURATION:-10s}"
conns="${BENCH_CONNECTIONS:-32}"
threads="${BENCH_THREADS:-2}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 2; }

bash functions/build.sh >/dev/null
cargo build --release -q -p wafer
cargo build --release -q -p wafer-gateway --example hyper_floor
source scripts/lib.sh
wafer="$(target_dir)/release/wafer"
floor="$(target_dir)/release/examples/hyper_floor"
hello=functions/dist/hello.wasm

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_http() { for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
ms_of() { # wrk latency like 1.23ms / 456.00us / 1.20s -> ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

declare -A rps p50 p99
run_wrk() { # name url expected-x-cache
    local out="$work/$1.wrk"
    local seen
    seen=$(curl -fsS -o /dev/null -D - "$2" | awk -F': ' 'tolower($1) == "x-cache" {print $2}' | tr -d '\r')
    if [ "$seen" != "$3" ]; then echo "$1: x-cache is '$seen', expected '$3'" >&2; exit 1; fi
    wrk -t"$threads" -c"$conns" -d"$duration" --latency "$2" >"$out" 2>&1
    if grep -q "Non-2xx" "$out"; then echo "$1: non-2xx answers during the run" >&2; cat "$out" >&2; exit 1; fi
    rps[$1]=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p50[$1]=$(ms_of "$(awk '$1 == "50%" {print $2}' "$out")")
    p99[$1]=$(ms_of "$(awk '$1 == "99%" {print $2}' "$out")")
}

echo "== hyper floor"
"$floor" 127.0.0.1:18190 >/dev/null & pids+=($!)
wait_http http://127.0.0.1:18190/
run_wrk floor http://127.0.0.1:18190/ ""
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== wafer serve"
data="$work/data"
"$wafer" serve --listen 127.0.0.1:18191 --data-dir "$data" >"$work/wafer.out" 2>"$work/wafer.log" & pids+=($!)
wait_http http://127.0.0.1:18191/healthz
key=$(cat "$data/admin.key")
digest=$(curl -fsS -X PUT -H "authorization: Bearer $key" -H 'content-type: application/wasm' \
    --data-binary @"$hello" http://127.0.0.1:18191/v1/modules | sed -E 's/.*"digest":"([^"]+)".*/\1/')
deploy() { # name spec-fields
    curl -fsS -o /dev/null -X PUT -H "authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"module\":\"$digest\",\"public\":true$2}" "http://127.0.0.1:18191/v1/functions/$1"
}
deploy cached ',"cache":{"ttl_ms":86400000}'
deploy uncached ''
curl -fsS -o /dev/null 'http://127.0.0.1:18191/fn/cached?name=bench'
run_wrk hit 'http://127.0.0.1:18191/fn/cached?name=bench' hit
run_wrk miss 'http://127.0.0.1:18191/fn/uncached?name=bench' miss

echo "== wafer cache (sidecar) in front of wafer serve"
"$wafer" cache --listen 127.0.0.1:18192 --upstream http://127.0.0.1:18191 >"$work/cache.out" 2>"$work/cache.log" & pids+=($!)
wait_http http://127.0.0.1:18192/_cache/metrics
curl -fsS -o /dev/null 'http://127.0.0.1:18192/fn/cached?name=sidecar'
run_wrk sidecar 'http://127.0.0.1:18192/fn/cached?name=sidecar' hit

echo
echo "wrk -t$threads -c$conns -d$duration on $(nproc) cores; hello is the function"
printf '%-26s %12s %10s %10s %10s %16s\n' target "requests/s" "p50 ms" "p99 ms" "vs floor" "p50 added (µs)"
row() {
    printf '%-26s %12s %10s %10s %9.1f%% %16.0f\n' "$1" "${rps[$2]}" "${p50[$2]}" "${p99[$2]}" \
        "$(awk -v a="${rps[$2]}" -v b="${rps[floor]}" 'BEGIN{print 100*a/b}')" \
        "$(awk -v a="${p50[$2]}" -v b="${p50[floor]}" 'BEGIN{print 1000*(a-b)}')"
}
row "hyper floor" floor
row "wafer cache hit" hit
row "wafer cache miss (runs)" miss
row "sidecar hit" sidecar
awk -v a="${rps[hit]}" -v b="${rps[floor]}" 'BEGIN{printf "hit / floor throughput: %.1f%% (target >= 70%%)\n", 100*a/b}'
awk -v a="${p50[hit]}" -v b="${p50[floor]}" 'BEGIN{printf "p50 a hit adds to the floor: %.0f µs (target <= 100 µs)\n", 1000*(a-b)}'
