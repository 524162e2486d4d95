#!/usr/bin/env bash
# Benchmark (not a test) of the response cache: a bare hyper server as the floor, then
# `wafer serve`'s own /healthz (its HTTP stack without the cache), `wafer serve` answering
# functions/hello from its cache (hit), running it for every request
# (miss: looked up, run, not kept), and a hit through `wafer cache` as a sidecar in front of
# the gateway; all in one run, driven by wrk at the same concurrency. Prints requests/s, p50
# and p99, the share of the floor's throughput and the p50 a hit adds to the floor, both at
# the load's concurrency and on one connection (service time without queueing).
#
#   scripts/bench-cache.sh                      # 10 s per target, 2 wrk threads, 32 connections
#   BENCH_DURATION=30s BENCH_CONNECTIONS=64 scripts/bench-cache.sh
#   BENCH_WAFER=/path/to/another/wafer scripts/bench-cache.sh   # measure another build against the same floor
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
bench_prepare

declare -A rps p50 p99
# cached_wrk NAME URL X-CACHE: run_wrk, once URL is seen to answer with that x-cache.
cached_wrk() {
    local seen
    seen=$(curl -fsS -o /dev/null -D - "$2" | awk -F': ' 'tolower($1) == "x-cache" {print $2}' | tr -d '\r')
    if [ "$seen" != "$3" ]; then echo "$1: x-cache is '$seen', expected '$3'" >&2; exit 1; fi
    run_wrk "$1" "$2"
}

echo "== hyper floor"
"$floor" 127.0.0.1:18190 >/dev/null & pids+=($!)
wait_http http://127.0.0.1:18190/
run_wrk floor http://127.0.0.1:18190/

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
run_wrk stack http://127.0.0.1:18191/healthz
cached_wrk hit 'http://127.0.0.1:18191/fn/cached?name=bench' hit
cached_wrk miss 'http://127.0.0.1:18191/fn/uncached?name=bench' miss

echo "== wafer cache (sidecar) in front of wafer serve"
"$wafer" cache --listen 127.0.0.1:18192 --upstream http://127.0.0.1:18191 >"$work/cache.out" 2>"$work/cache.log" & pids+=($!)
wait_http http://127.0.0.1:18192/_cache/metrics
curl -fsS -o /dev/null 'http://127.0.0.1:18192/fn/cached?name=sidecar'
cached_wrk sidecar 'http://127.0.0.1:18192/fn/cached?name=sidecar' hit

echo "== one connection: the latency a hit adds, without queueing"
saved=("$threads" "$conns")
threads=1 conns=1
run_wrk floor1 http://127.0.0.1:18190/
cached_wrk hit1 'http://127.0.0.1:18191/fn/cached?name=bench' hit
threads=${saved[0]} conns=${saved[1]}

echo
echo "wrk -t$threads -c$conns -d$duration on $(nproc) cores; hello is the function"
printf '%-26s %12s %10s %10s %10s %16s\n' target "requests/s" "p50 ms" "p99 ms" "vs floor" "p50 added (µs)"
row() {
    printf '%-26s %12s %10s %10s %9.1f%% %16.0f\n' "$1" "${rps[$2]}" "${p50[$2]}" "${p99[$2]}" \
        "$(awk -v a="${rps[$2]}" -v b="${rps[floor]}" 'BEGIN{print 100*a/b}')" \
        "$(awk -v a="${p50[$2]}" -v b="${p50[floor]}" 'BEGIN{print 1000*(a-b)}')"
}
row "hyper floor" floor
row "wafer /healthz (no cache)" stack
row "wafer cache hit" hit
row "wafer cache miss (runs)" miss
row "sidecar hit" sidecar
echo "one connection (wrk -t1 -c1):"
printf '%-26s %12s %10s %10s\n' "hyper floor" "${rps[floor1]}" "${p50[floor1]}" "${p99[floor1]}"
printf '%-26s %12s %10s %10s\n' "wafer cache hit" "${rps[hit1]}" "${p50[hit1]}" "${p99[hit1]}"
awk -v a="${rps[hit]}" -v b="${rps[floor]}" 'BEGIN{printf "hit / floor throughput: %.1f%% (target >= 70%%)\n", 100*a/b}'
awk -v a="${p50[hit1]}" -v b="${p50[floor1]}" 'BEGIN{printf "p50 a hit adds to the floor, one connection: %.0f µs (target <= 100 µs)\n", 1000*(a-b)}'
awk -v a="${p50[hit]}" -v b="${p50[floor]}" 'BEGIN{printf "p50 a hit adds to the floor at %d connections (queueing included): %.0f µs\n", '"$conns"', 1000*(a-b)}'
