#!/usr/bin/env bash
# Builds every function in release and collects the binaries in dist/:
#   dist/<name>.wasm   preview-1 modules for the commands, a component for hello
#   dist/<name>-p2.wasm echo, spin, hog and nap as preview-2 command components
# Callers that share the machine take the cargo lock themselves:
#   flock /tmp/cargo.lock bash functions/build.sh
set -euo pipefail

cd "$(dirname "$0")"

commands=(echo stress spin hog deep flood escape nap fail scan)
# Absolute, so it names the same place from every directory below (a relative
# CARGO_TARGET_DIR, or the default `target`, is relative to this directory).
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
p1="$target_dir/wasm32-wasip1/release"
p2="$target_dir/wasm32-wasip2/release"

package_args() {
    for name in "$@"; do printf -- '-p %s ' "$name"; done
}

# shellcheck disable=SC2046 # word splitting of the -p list is intended
cargo build --release --target wasm32-wasip1 $(package_args "${commands[@]}")
cargo build --release --target wasm32-wasip2 -p hello -p inspect -p echo -p spin -p hog -p nap

rm -rf dist
mkdir -p dist
for name in "${commands[@]}"; do
    install -m 0644 "$p1/$name.wasm" "dist/$name.wasm"
done
install -m 0644 "$p2/hello.wasm" dist/hello.wasm
install -m 0644 "$p2/inspect.wasm" dist/inspect.wasm
install -m 0644 "$p2/echo.wasm" dist/echo-p2.wasm
for name in spin hog nap; do
    install -m 0644 "$p2/$name.wasm" "dist/$name-p2.wasm"
done

# pyhello: a Python HTTP component, when componentize-py is available (scripts/test.sh installs
# it). Built against the wasi:http WIT that the host's wasmtime-wasi-http crate ships. It takes
# ~20 s, so the result is cached in the target directory by the hash of its inputs.
py="${COMPONENTIZE_PY:-$(command -v componentize-py || true)}"
if [ -z "$py" ] && [ -x "$target_dir/pyenv/bin/componentize-py" ]; then
    py="$target_dir/pyenv/bin/componentize-py"
fi
if [ -n "$py" ]; then
    key=$( (cat pyhello/app.py; "$py" --version) | sha256sum | cut -c1-16)
    cached="$target_dir/pyhello-$key.wasm"
    if [ ! -f "$cached" ]; then
        wit=$(cargo metadata --format-version 1 --manifest-path ../Cargo.toml | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.join(os.path.dirname(p["manifest_path"]), "wit")
           for p in m["packages"] if p["name"] == "wasmtime-wasi-http"))')
        mkdir -p "$target_dir"
        (cd pyhello && "$py" -d "$wit" -w wasi:http/proxy@0.2.12 componentize app -o "$cached.part")
        mv "$cached.part" "$cached"
    fi
    install -m 0644 "$cached" dist/pyhello.wasm
else
    echo "componentize-py not found: skipping pyhello (pip install componentize-py)" >&2
fi

for file in dist/*.wasm; do
    printf '%10d  %s\n' "$(stat -c %s "$file")" "$file"
done
