#!/usr/bin/env bash
# Runs every test: builds the wasm functions, the wafer binary, then unit and end-to-end tests.
# Installs what it needs (wasm targets); reuses $CARGO_TARGET_DIR when set.
set -euo pipefail
cd "$(dirname "$0")/.."

installed=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

echo "== building functions (wasm)"
bash functions/build.sh

echo "== building wafer"
cargo build -p wafer
target_dir="${CARGO_TARGET_DIR:-target}"
export WAFER_BIN="$PWD/$target_dir/debug/wafer"
case "$target_dir" in /*) export WAFER_BIN="$target_dir/debug/wafer" ;; esac

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
