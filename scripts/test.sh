#!/usr/bin/env bash
# Runs every test: builds the wasm functions, the wafer binary, then unit and end-to-end tests.
# Installs what it needs (wasm targets, componentize-py, schemathesis, redis-server, qemu,
# cargo-nextest, the Python SDK's venv; the vm tests fetch Debian's kernel package); reuses
# $CARGO_TARGET_DIR when set.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
ensure_wasm_targets
ensure_componentize_py
ensure_redis
ensure_qemu
ensure_nextest

echo "== building functions (wasm)"
bash functions/build.sh

echo "== building wafer"
cargo build -p wafer
WAFER_BIN="$(target_dir)/debug/wafer"
export WAFER_BIN

echo "== API conformance (schemathesis against /openapi.json)"
bash scripts/api-conformance.sh

echo "== guest SDK unit tests"
cargo test --manifest-path sdk/rust/Cargo.toml --features http

echo "== tests"
status=0
cargo nextest run --workspace --no-fail-fast || status=$?
# Every VM the tests start (servers' and the tests' own) is named wafer-…: none may outlive them.
if pgrep -a -f '^qemu-system-x86_64 -name wafer-'; then
    echo "these qemu processes outlived the tests" >&2
    pkill -9 -f '^qemu-system-x86_64 -name wafer-' || true
    status=1
fi
[ "$status" -eq 0 ] || exit "$status"

echo "== Python SDK (sdk/python: mypy --strict, pytest against the built wafer)"
ensure_python_sdk
(cd sdk/python && "$SDK_PYTHON" -m mypy --strict src/wafer && "$SDK_PYTHON" -m pytest -q -p no:cacheprovider tests)
