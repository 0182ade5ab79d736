#!/usr/bin/env bash
# wasmraft's two commands (see README.md), plus the set-up they share.
#   ./dev.sh run    build, then run the embedded default (today: the conformance checks on the kv
#                   plugin, and on its Python, JavaScript and C ports against it)
#   ./dev.sh test   build, then run the whole test suite: fmt, clippy, cargo test (host and plugins)
#   ./dev.sh setup  only install what is missing
# Installs what it needs and nothing else: the wasm32-wasip2 Rust target, rustfmt and clippy, and
# the non-Rust plugin toolchains into tools/ (pinned in tools/requirements.txt, tools/package.json
# with its lock, and WIT_BINDGEN_VERSION below): componentize-py, zig and wasm-tools in a Python
# venv, componentize-js with npm, wit-bindgen's C generator with cargo.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

WIT_BINDGEN_VERSION=0.63.0

setup() {
    if ! command -v cargo >/dev/null; then
        echo "error: cargo not found: install Rust (rustup) first" >&2
        exit 1
    fi
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        step "installing the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
    for component in rustfmt clippy; do
        if ! rustup component list --installed | grep -q "^$component"; then
            step "installing $component"
            rustup component add "$component"
        fi
    done
    setup_plugin_tools
}

# A toolchain is stale unless its stamp holds the hash of its pin files as they are now.
pins_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }
stale() { # stale STAMP PIN_FILE...
    local stamp=$1
    shift
    [ "$(cat "$stamp" 2>/dev/null)" != "$(pins_hash "$@")" ]
}

setup_plugin_tools() {
    for tool in python3 npm node; do
        if ! command -v "$tool" >/dev/null; then
            echo "error: $tool not found: the Python and JavaScript plugins need it" >&2
            exit 1
        fi
    done
    if stale tools/venv/.installed tools/requirements.txt; then
        step "installing componentize-py, zig and wasm-tools into tools/venv"
        # At its real path: a venv's scripts name their interpreter by absolute path, and CI links
        # tools/venv to a cache shared by clones at different paths.
        python3 -m venv "$(realpath -m tools/venv)"
        tools/venv/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
        pins_hash tools/requirements.txt >tools/venv/.installed
    fi
    if stale tools/node_modules/.installed tools/package.json tools/package-lock.json; then
        step "installing componentize-js into tools/node_modules"
        # `npm install` honours the lock; `npm ci` rejects locks written without other
        # platforms' optional packages, as this registry setup writes them.
        (cd tools && npm install --no-audit --no-fund --loglevel=error)
        pins_hash tools/package.json tools/package-lock.json >tools/node_modules/.installed
    fi
    if ! [ -x tools/cargo/bin/wit-bindgen ] || ! tools/cargo/bin/wit-bindgen --version | grep -q "$WIT_BINDGEN_VERSION"; then
        step "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (C generator) into tools/cargo"
        # --debug: it only generates a few files per build, and builds in half the time.
        cargo install --quiet --debug --locked "wit-bindgen-cli@$WIT_BINDGEN_VERSION" --no-default-features --features c --root tools/cargo
    fi
}

plugins_dir() {
    echo "${CARGO_TARGET_DIR:-target}/plugins"
}

run() {
    setup
    step "building wasmraft and the example plugins (cold: about 15 minutes on 2 cores)"
    cargo build --bin wasmraft
    step "wasmraft plugin test $(plugins_dir)/kv.wasm"
    cargo run --quiet --bin wasmraft -- plugin test "$(plugins_dir)/kv.wasm"
    # The same plugin in Python, JavaScript and C, checked result for result against the Rust one.
    # The first run compiles the Python and JavaScript components (about a minute); later runs hit
    # the compiled-artifact cache.
    for port in kv-py kv-js kv-c; do
        step "wasmraft plugin test $(plugins_dir)/$port.wasm --reference $(plugins_dir)/kv.wasm"
        cargo run --quiet --bin wasmraft -- plugin test "$(plugins_dir)/$port.wasm" \
            --script plugins/kv/cases.jsonl --reference "$(plugins_dir)/kv.wasm" \
            --cache-dir "${CARGO_TARGET_DIR:-target}/plugin-cache"
    done
}

test() {
    setup
    step "cargo fmt --check"
    cargo fmt --all -- --check
    cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
    step "cargo clippy (host workspace, all targets)"
    cargo clippy --workspace --all-targets -- -D warnings
    step "cargo clippy (plugins, wasm32-wasip2)"
    cargo clippy --manifest-path plugins/Cargo.toml --workspace --target wasm32-wasip2 -- -D warnings
    local log
    log=$(mktemp)
    step "cargo test (plugins, natively through wasmraft_guest::testing)"
    cargo test --manifest-path plugins/Cargo.toml --workspace 2>&1 | tee -a "$log"
    step "cargo test (host workspace: runtime, guest SDK, end-to-end)"
    cargo test --workspace 2>&1 | tee -a "$log"
    # One closing line for the whole suite (cargo prints one per test binary).
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
         END { printf "\nwasmraft: %d passed, %d failed\n", p, f }' "$log"
    rm -f "$log"
}

case "${1:-}" in
    run) run ;;
    test) test ;;
    setup) setup ;;
    *)
        echo "usage: $0 run|test|setup" >&2
        exit 2
        ;;
esac
