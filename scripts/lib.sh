# Shared helpers of the scripts; sourced, not run.

# Adds the wasm targets the functions are built for, when missing.
ensure_wasm_targets() {
    local installed t
    installed=$(rustup target list --installed)
    for t in wasm32-wasip1 wasm32-wasip2; do
        grep -qx "$t" <<<"$installed" || rustup target add "$t"
    done
}

# Installs cargo-nextest when it is missing: the test groups and per-test timeouts of
# .config/nextest.toml apply only under it.
ensure_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        return
    fi
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
    cargo nextest --version >/dev/null 2>&1 || { echo "cargo-nextest could not be installed" >&2; exit 1; }
}

# The cargo target directory in use.
target_dir() {
    local d="${CARGO_TARGET_DIR:-target}"
    case "$d" in /*) echo "$d" ;; *) echo "$PWD/$d" ;; esac
}

# Installs componentize-py (for the Python test function) in a venv kept in the target
# directory, and exports COMPONENTIZE_PY.
ensure_componentize_py() {
    local venv
    venv="$(target_dir)/pyenv"
    if [ ! -x "$venv/bin/componentize-py" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q componentize-py==0.25.1
    fi
    export COMPONENTIZE_PY="$venv/bin/componentize-py"
}

# Installs schemathesis (the API conformance tester) in a venv kept in the target directory,
# and exports SCHEMATHESIS.
ensure_schemathesis() {
    local venv
    venv="$(target_dir)/stvenv"
    if [ ! -x "$venv/bin/schemathesis" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q schemathesis==4.32.5
    fi
    export SCHEMATHESIS="$venv/bin/schemathesis"
}

# Creates the Python SDK's test environment (a venv kept in the target directory, its pinned
# tools installed once), installs sdk/python into it as a wheel built by its own backend, and
# exports SDK_PYTHON.
ensure_python_sdk() {
    local venv stamp pins
    venv="$(target_dir)/sdkenv"
    pins="httpx==0.28.1 anyio==4.16.0 wasmtime==50.0.1 tqdm==4.70.1 pytest==9.2.0 mypy==2.4.1 hatchling==1.33.0"
    stamp="$venv/.pins"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$pins" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        # shellcheck disable=SC2086 # the pins are separate words
        "$venv/bin/pip" install -q $pins
        echo "$pins" >"$stamp"
    fi
    "$venv/bin/pip" install -q --force-reinstall --no-deps --no-build-isolation ./sdk/python
    export SDK_PYTHON="$venv/bin/python"
}

# Installs qemu-system-x86 (Debian package) when missing: the vm tests boot microVMs with it.
ensure_qemu() {
    if command -v qemu-system-x86_64 >/dev/null 2>&1; then
        return
    fi
    echo "installing qemu-system-x86"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
    command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo "qemu-system-x86 could not be installed" >&2; exit 1; }
}

# Installs redis-server (Debian package) when it is missing: the queue tests start their own.
ensure_redis() {
    if command -v redis-server >/dev/null 2>&1; then
        return
    fi
    echo "installing redis-server"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    command -v redis-server >/dev/null 2>&1 || { echo "redis-server could not be installed" >&2; exit 1; }
}

# Benchmark set-up: wrk's settings from BENCH_DURATION (10s), BENCH_CONNECTIONS (32) and
# BENCH_THREADS (2); the functions and release binaries built ($wafer, the $floor hyper server,
# $hello); a scratch directory $work, and the processes in $pids killed on exit.
bench_prepare() {
    duration="${BENCH_DURATION:-10s}"
    conns="${BENCH_CONNECTIONS:-32}"
    threads="${BENCH_THREADS:-2}"
    command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 2; }
    bash functions/build.sh >/dev/null
    # BENCH_WAFER: a wafer binary to measure instead of this tree's (another commit's, say).
    if [ -n "${BENCH_WAFER:-}" ]; then
        wafer="$BENCH_WAFER"
    else
        cargo build --release -q -p wafer
        wafer="$(target_dir)/release/wafer"
    fi
    cargo build --release -q -p wafer-gateway --example hyper_floor
    floor="$(target_dir)/release/examples/hyper_floor"
    hello=functions/dist/hello.wasm
    work=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT
}

# The job benchmarks' set-up: the functions, the release `wafer` and the jobs_bench example built;
# $wafer and $jobs_bench name the binaries.
jobs_bench_prepare() {
    bash functions/build.sh >/dev/null
    cargo build --release -q -p wafer
    cargo build --release -q -p wafer-gateway --example jobs_bench
    wafer="$(target_dir)/release/wafer"
    jobs_bench="$(target_dir)/release/examples/jobs_bench"
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

# Waits until URL answers 2xx (10 s at most).
wait_http() { for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

# A wrk latency (1.23ms, 456.00us, 1.20s) in ms.
ms_of() {
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# run_wrk NAME URL: drives URL with wrk ($threads threads, $conns connections, $duration) and
# puts requests/s, p50 and p99 (ms) in the caller's arrays rps, p50 and p99 under NAME; the
# output stays in $work/NAME.wrk. Non-2xx answers fail the run.
run_wrk() {
    local out="$work/$1.wrk"
    wrk -t"$threads" -c"$conns" -d"$duration" --latency "$2" >"$out" 2>&1
    if grep -q "Non-2xx" "$out"; then echo "$1: non-2xx answers during the run" >&2; cat "$out" >&2; exit 1; fi
    rps[$1]=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p50[$1]=$(ms_of "$(awk '$1 == "50%" {print $2}' "$out")")
    p99[$1]=$(ms_of "$(awk '$1 == "99%" {print $2}' "$out")")
}
