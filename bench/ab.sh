#!/usr/bin/env bash
# A/B of two builds on one `wasmraft bench` row, the way docs/performance.md's "What moved"
# figures were measured: each run on a fresh local 3-node cluster (plaintext, ports 7700-7702,
# data in a temp dir), after a 2 s warm-up, the two builds alternated ROUNDS times (default 2),
# so the machine's drift over the minutes weighs on both alike. One line per run:
#   bench/ab.sh OLD_BIN NEW_BIN "--clients 64 --duration 6s" [ROUNDS]
# Differences under about 10% in two rounds are within this machine's noise.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: bench/ab.sh OLD_BIN NEW_BIN \"BENCH FLAGS\" [ROUNDS]" >&2; exit 1; }
old=$1 new=$2 row=$3 rounds=${4:-2}
for bin in "$old" "$new"; do
    [ -x "$bin" ] || { echo "error: $bin not found: cargo build --release --features bench --bin wasmraft" >&2; exit 1; }
done
work=
# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"
stop() {
    stop_cluster
    [ -z "$work" ] || rm -rf "$work"
    work=
}
trap stop EXIT

# One run of the row against a fresh cluster of `$1`; prints its result line.
run() {
    local bin=$1 out
    work=$(mktemp -d)
    export WASMRAFT_CONTEXT=$work/context.toml
    start_cluster "$bin" "$work"
    "$bin" bench --endpoint http://127.0.0.1:7700 --clients 8 --duration 2s >/dev/null
    # shellcheck disable=SC2086 # the row is a list of flags
    out=$("$bin" bench --endpoint http://127.0.0.1:7700 $row)
    printf '%s | %s\n' "$(grep -E '^kv ' <<<"$out")" "$(grep 'cost per op' <<<"$out" | sed 's/^ *cost per op: //')"
    stop
}

echo "row: wasmraft bench $row"
echo "columns: plugin ops ops/s p50-ms p99-ms p999-ms errors | cost per op"
for round in $(seq 1 "$rounds"); do
    for bin in "$old" "$new"; do
        printf 'round %s %-30s ' "$round" "$(basename "$bin")"
        run "$bin"
    done
done
