#!/usr/bin/env bash
# Builds every function in release and collects the binaries in dist/:
#   dist/<name>.wasm   preview-1 modules for the commands, a component for hello
#   dist/echo-p2.wasm  echo as a preview-2 command component
# Callers that share the machine take the cargo lock themselves:
#   flock /tmp/cargo.lock bash functions/build.sh
set -euo pipefail

cd "$(dirname "$0")"

commands=(echo stress spin hog deep flood escape nap fail)
target_dir="${CARGO_TARGET_DIR:-target}"
p1="$target_dir/wasm32-wasip1/release"
p2="$target_dir/wasm32-wasip2/release"

package_args() {
    for name in "$@"; do printf -- '-p %s ' "$name"; done
}

# shellcheck disable=SC2046 # word splitting of the -p list is intended
cargo build --release --target wasm32-wasip1 $(package_args "${commands[@]}")
cargo build --release --target wasm32-wasip2 -p hello -p inspect -p echo

rm -rf dist
mkdir -p dist
for name in "${commands[@]}"; do
    install -m 0644 "$p1/$name.wasm" "dist/$name.wasm"
done
install -m 0644 "$p2/hello.wasm" dist/hello.wasm
install -m 0644 "$p2/inspect.wasm" dist/inspect.wasm
install -m 0644 "$p2/echo.wasm" dist/echo-p2.wasm

for file in dist/*.wasm; do
    printf '%10d  %s\n' "$(stat -c %s "$file")" "$file"
done
