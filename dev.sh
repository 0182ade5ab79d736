#!/usr/bin/env bash
# wasmraft's two commands (see README.md), plus the set-up they share.
#   ./dev.sh run    build, then run the embedded default: `wasmraft dev`, a local 3-node cluster
#                   with the kv plugin deployed (extra arguments go to `wasmraft dev`)
#   ./dev.sh test   build, then run the whole test suite: fmt, clippy, cargo test (host and plugins)
#   ./dev.sh setup  only install what is missing
# Installs what it needs and nothing else: libclang and a C++ compiler for RocksDB and chromium
# for the status page's browser test (apt-get), the wasm32-wasip2 Rust target, rustfmt and clippy, and
# the non-Rust plugin toolchains into tools/ (pinned in tools/requirements.txt, tools/package.json
# with its lock, and WIT_BINDGEN_VERSION below): componentize-py, zig and wasm-tools in a Python
# venv, componentize-js with npm, wit-bindgen's C generator and cargo-deny with cargo.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

WIT_BINDGEN_VERSION=0.63.0
CARGO_DENY_VERSION=0.20.2

setup() {
    if ! command -v cargo >/dev/null; then
        echo "error: cargo not found: install Rust (rustup) first" >&2
        exit 1
    fi
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        step "installing the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
    setup_system_packages
    for component in rustfmt clippy; do
        if ! rustup component list --installed | grep -q "^$component"; then
            step "installing $component"
            rustup component add "$component"
        fi
    done
    setup_plugin_tools
}

# RocksDB's bindings are generated at build time against the system libclang, and its C++ needs a
# compiler: install them when missing (Debian/Ubuntu; as root or with sudo).
setup_system_packages() {
    local missing=()
    # bindgen needs the library and clang's own headers (stddef.h), both in libclang-dev.
    { ls /usr/lib/llvm-*/lib/libclang*.so* && ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h; } >/dev/null 2>&1 ||
        missing+=(libclang-dev)
    command -v c++ >/dev/null || missing+=(g++)
    # The status page's test loads it in a real headless browser.
    command -v chromium >/dev/null || missing+=(chromium)
    # `wasmraft chaos` partitions nodes with nftables inside a network namespace of its own.
    command -v nft >/dev/null || missing+=(nftables)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v unshare >/dev/null || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return
    step "installing ${missing[*]} (RocksDB's build; chromium for the status page's test; nftables for chaos)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
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
        # `npm ci` installs exactly the lock and never rewrites it (the lock lists every
        # platform's optional packages, so it is complete wherever it is used).
        (cd tools && npm ci --no-audit --no-fund --loglevel=error)
        pins_hash tools/package.json tools/package-lock.json >tools/node_modules/.installed
    fi
    if ! [ -x tools/cargo/bin/wit-bindgen ] || ! tools/cargo/bin/wit-bindgen --version | grep -q "$WIT_BINDGEN_VERSION"; then
        step "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (C generator) into tools/cargo"
        # --debug: it only generates a few files per build, and builds in half the time.
        cargo install --quiet --debug --locked "wit-bindgen-cli@$WIT_BINDGEN_VERSION" --no-default-features --features c --root tools/cargo
    fi
    if ! [ -x tools/cargo/bin/cargo-deny ] || ! tools/cargo/bin/cargo-deny --version | grep -q "$CARGO_DENY_VERSION"; then
        step "installing cargo-deny $CARGO_DENY_VERSION (dependency licenses, bans and sources) into tools/cargo"
        # --debug and no default features (no advisory fetching): about 2 minutes on 2 cores.
        cargo install --quiet --debug --locked "cargo-deny@$CARGO_DENY_VERSION" --no-default-features --root tools/cargo
    fi
}

run() {
    setup
    # A release build: the cluster you try is the one the benchmarks measure (a dev build is about
    # half as fast, and its dependencies keep their debug assertions). With the bench feature, so
    # `wasmraft bench --compare-native` works against it.
    step "building wasmraft (release) and the example plugins (cold: about 30 minutes on 2 cores)"
    cargo build --release --features bench --bin wasmraft
    step "wasmraft dev: a 3-node cluster on 127.0.0.1:7001-7003 with the kv plugin (Ctrl-C stops it)"
    exec "${CARGO_TARGET_DIR:-target}/release/wasmraft" dev "$@"
}

test() {
    setup
    step "cargo fmt --check"
    cargo fmt --all -- --check
    cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
    step "cargo deny check bans licenses sources (deny.toml)"
    tools/cargo/bin/cargo-deny --log-level error check bans licenses sources
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
    run) shift; run "$@" ;;
    test) test ;;
    setup) setup ;;
    *)
        echo "usage: $0 run|test|setup" >&2
        exit 2
        ;;
esac
