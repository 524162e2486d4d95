#!/usr/bin/env bash
# API conformance: starts `wafer serve` on a free port with a temporary data directory,
# deploys the example `hello` as a public function, and runs schemathesis against the served
# /openapi.json with every check, a bounded number of examples per operation and a fixed seed
# (SCHEMATHESIS_EXAMPLES, SCHEMATHESIS_SEED override). Any mismatch between the document and
# the server fails the run. Needs the wafer binary (WAFER_BIN) and functions/dist.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_schemathesis

wafer="${WAFER_BIN:-$(target_dir)/debug/wafer}"
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$wafer" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/log" &
pid=$!
url=
for _ in $(seq 1 400); do
    url=$(sed -n 's/^wafer listening on //p' "$work/out")
    [ -n "$url" ] && break
    sleep 0.05
done
[ -n "$url" ] || { echo "wafer serve did not start:" >&2; cat "$work/log" >&2; exit 1; }
key=$(cat "$work/data/admin.key")
WAFER_URL="$url" WAFER_API_KEY="$key" "$wafer" deploy hello functions/dist/hello.wasm --public >/dev/null

# Run from the scratch directory: schemathesis keeps a cache where it runs.
config="$PWD/scripts/schemathesis.toml"
cd "$work"
"$SCHEMATHESIS" --config-file "$config" run "$url/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks all \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" \
    --seed "${SCHEMATHESIS_SEED:-20261125}" \
    --generation-database none \
    --no-color
