# Shared helpers of the scripts; sourced, not run.

# Adds the wasm targets the functions are built for, when missing.
ensure_wasm_targets() {
    local installed t
    installed=$(rustup target list --installed)
    for t in wasm32-wasip1 wasm32-wasip2; do
        grep -qx "$t" <<<"$installed" || rustup target add "$t"
    done
}

# The cargo target directory in use.
target_dir() {
    local d="${CARGO_TARGET_DIR:-target}"
    case "$d" in /*) echo "$d" ;; *) echo "$PWD/$d" ;; esac
}
