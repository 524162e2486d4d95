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
