#!/usr/bin/env bash
# wasmraft's two commands (see README.md), plus the set-up they share.
#   ./dev.sh run    build, then run the embedded default (today: the conformance checks on the kv plugin)
#   ./dev.sh test   build, then run the whole test suite: fmt, clippy, cargo test (host and plugins)
#   ./dev.sh setup  only install what is missing
# Installs what it needs and nothing else: the wasm32-wasip2 Rust target, rustfmt and clippy.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

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
}

plugins_dir() {
    echo "${CARGO_TARGET_DIR:-target}/plugins"
}

run() {
    setup
    step "building wasmraft and the example plugins (a cold build takes ~15 minutes on 2 cores)"
    cargo build --bin wasmraft
    step "wasmraft plugin test $(plugins_dir)/kv.wasm"
    cargo run --quiet --bin wasmraft -- plugin test "$(plugins_dir)/kv.wasm"
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
