#!/usr/bin/env bash
# The throughput rows (issue 13) against a fresh local 3-node cluster, WASM kv and native kv side
# by side in each row. Build the binary first, as a release bench build:
#   cargo build --release --features bench --bin wasmraft
#   bench/throughput.sh [target/release/wasmraft] [ROUNDS]
# Every row is one `wasmraft bench` run (printed before its output, so any row can be run alone).
# The cluster is plaintext (`--insecure`) on ports 7700-7702 (peers 7750-7752, metrics 7800-7802)
# with its data in a temp dir; the script stops it at the end.
set -euo pipefail
bin=${1:-target/release/wasmraft}
rounds=${2:-1}
[ -x "$bin" ] || { echo "error: $bin not found: cargo build --release --features bench --bin wasmraft" >&2; exit 1; }
work=$(mktemp -d)
export WASMRAFT_CONTEXT=$work/context.toml
dev=
stop() { [ -n "$dev" ] && kill -INT "$dev" 2>/dev/null && wait "$dev" 2>/dev/null; rm -rf "$work"; }
trap stop EXIT

start_cluster() {
    "$bin" dev --base-port 7700 --insecure --data-dir "$work/data" >"$work/dev.log" 2>&1 &
    dev=$!
    for _ in $(seq 1 120); do
        grep -q "Ctrl-C" "$work/dev.log" && return
        kill -0 "$dev" 2>/dev/null || { cat "$work/dev.log" >&2; exit 1; }
        sleep 1
    done
    echo "error: the dev cluster did not start in 120 s" >&2
    cat "$work/dev.log" >&2
    exit 1
}

row() {
    echo
    echo "== $bin bench --endpoint http://127.0.0.1:7700 --compare-native $*"
    "$bin" bench --endpoint http://127.0.0.1:7700 --compare-native "$@"
}

start_cluster
for round in $(seq 1 "$rounds"); do
    echo
    echo "#### round $round"
    row --clients 1 --ops 2000
    row --clients 64 --ops 40000
    row --clients 256 --ops 80000
    row --clients 64 --pipeline 4 --ops 80000
    for consistency in linearizable lease local; do
        row --clients 64 --ops 100000 --read-ratio 1 --consistency "$consistency"
    done
    row --clients 64 --ops 100000 --read-ratio 0.9
done
