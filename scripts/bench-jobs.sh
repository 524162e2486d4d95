#!/usr/bin/env bash
# Job benchmark (not a test): jobs/s of a trivial function through the embedded queue and
# through Redis Streams with 1 and 2 workers, and enqueue->start latency with a warm worker,
# from zero on the worker path and from zero on the local dedicated path. Release build.
#
#   scripts/bench-jobs.sh          # 2000 jobs per throughput run
#   BENCH_JOBS=5000 scripts/bench-jobs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_redis
jobs_bench_prepare
"$jobs_bench" "$wafer" functions/dist/echo.wasm "${BENCH_JOBS:-2000}"
