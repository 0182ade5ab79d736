#!/usr/bin/env bash
# The throughput rows (issue 13) against a fresh local 3-node cluster, WASM kv and native kv side
# by side in each row. Build the binary first, as a release bench build:
#   cargo build --release --features bench --bin wasmraft
#   bench/throughput.sh [target/release/wasmraft] [ROUNDS]
# Every row is one `wasmraft bench` run of 10 s per plugin (printed before its output, so any row
# can be run alone); $BENCH_FLAGS goes to every row (e.g. BENCH_FLAGS=--unary).
# The cluster is plaintext (`--insecure`) on ports 7700-7702 (peers 7750-7752, metrics 7800-7802)
# with its data in a temp dir; the script stops it at the end.
set -euo pipefail
bin=${1:-target/release/wasmraft}
rounds=${2:-1}
[ -x "$bin" ] || { echo "error: $bin not found: cargo build --release --features bench --bin wasmraft" >&2; exit 1; }
work=$(mktemp -d)
export WASMRAFT_CONTEXT=$work/context.toml
# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"
stop() { stop_cluster; rm -rf "$work"; }
trap stop EXIT

# A row's clients talk to node 1 (port 7700), or to $port when set.
row() {
    local endpoint="http://127.0.0.1:${port:-7700}"
    echo
    echo "== $bin bench --endpoint $endpoint --compare-native $* ${BENCH_FLAGS:-}"
    # shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
    "$bin" bench --endpoint "$endpoint" --compare-native "$@" ${BENCH_FLAGS:-}
}

# A node's /metrics text, from its metrics port.
scrape() {
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
    cat <&3
    exec 3<&-
}

# The client port of a node that does not lead (its metrics port is 100 above it).
follower_port() {
    for p in 7700 7701 7702; do
        if ! scrape $((p + 100)) | grep -q '^wasmraft_is_leader 1'; then
            echo "$p"
            return
        fi
    done
    echo "error: no follower found" >&2
    exit 1
}

start_cluster "$bin" "$work"
for round in $(seq 1 "$rounds"); do
    echo
    echo "#### round $round"
    row --clients 1 --duration 10s
    row --clients 64 --duration 10s
    row --clients 256 --duration 10s
    row --clients 64 --pipeline 4 --duration 10s
    row --clients 16 --pipeline 64 --duration 10s
    for consistency in linearizable lease local; do
        row --clients 64 --duration 10s --read-ratio 1 --consistency "$consistency"
    done
    for consistency in linearizable lease; do
        row --clients 64 --pipeline 4 --duration 10s --read-ratio 1 --consistency "$consistency"
    done
    row --clients 64 --duration 10s --read-ratio 0.9
    # The same clients sharing connections, eight to each, as etcd's benchmark has them share
    # (--conns): per connection, their requests share its reads, writes and HTTP/2 frames.
    row --clients 64 --conns 8 --duration 10s
    row --clients 256 --conns 32 --duration 10s
    for consistency in linearizable lease; do
        row --clients 64 --conns 8 --duration 10s --read-ratio 1 --consistency "$consistency"
    done
    row --clients 64 --conns 8 --duration 10s --read-ratio 0.9
    # Clients on a follower: writes forwarded to the leader, reads asking it for a read index.
    port=$(follower_port) row --clients 64 --duration 10s
    port=$(follower_port) row --clients 64 --duration 10s --read-ratio 1 --consistency linearizable
done
