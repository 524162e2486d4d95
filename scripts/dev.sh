#!/usr/bin/env bash
# Starts Wafer on its embedded defaults (data in ./.wafer, http://127.0.0.1:8080) with the
# example functions deployed, and keeps it in the foreground (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
ensure_wasm_targets
bash functions/build.sh >/dev/null
cargo build --release -p wafer
wafer="$(target_dir)/release/wafer"

export WAFER_DATA_DIR="${WAFER_DATA_DIR:-.wafer}"
export WAFER_URL="${WAFER_URL:-http://127.0.0.1:8080}"
listen="${WAFER_URL#http://}"

"$wafer" serve --listen "$listen" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do
    curl -fsS "$WAFER_URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

"$wafer" deploy hello functions/dist/hello.wasm --public
"$wafer" deploy echo functions/dist/echo.wasm --public
"$wafer" deploy stress functions/dist/stress.wasm --public
cat <<MSG

Wafer is running at $WAFER_URL with hello, echo and stress deployed (public):
  curl '$WAFER_URL/fn/hello?name=you'
  curl -d 'ping' $WAFER_URL/fn/echo
  curl -d '{"force":1000,"section":10}' $WAFER_URL/fn/stress
  $wafer ls        # the CLI finds the admin key in $WAFER_DATA_DIR
MSG
wait $server
