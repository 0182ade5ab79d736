#!/usr/bin/env bash
# Builds the C kv plugin into a component: bindings from `wit-bindgen c`, compiled with the C SDK
# (sdk/c) by zig for wasm32-wasi (reactor, no WASI imports needed), wrapped by
# `wasm-tools component new`.
# Usage: plugins/kv-c/build.sh OUT.wasm   (tools come from tools/, installed by ./dev.sh setup)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
sdk=$repo/sdk/c
out=${!#}
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$repo/tools/cargo/bin/wit-bindgen" c "$repo/wit" --world state-machine --out-dir "$gen" >/dev/null
"$repo/tools/venv/bin/python-zig" cc -target wasm32-wasi -std=c11 -Wall -Wextra -O2 -mexec-model=reactor \
    -g0 -Wl,--strip-debug -I "$gen" -I "$sdk" \
    "$here/kv.c" "$sdk/wasmraft.c" "$gen/state_machine.c" "$gen/state_machine_component_type.o" \
    -o "$gen/kv-c.core.wasm"
"$repo/tools/venv/bin/wasm-tools" component new "$gen/kv-c.core.wasm" -o "$out"
