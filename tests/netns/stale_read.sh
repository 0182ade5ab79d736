#!/usr/bin/env bash
# A stale-read hunt over real node processes and a real partition (issue 18): three `wasmraft node`
# processes, each in its own network namespace on a bridge, partitioned by nftables rules that
# drop packets (connections stay open and TCP retransmits after the heal, as in production).
#
# Each round: a write through the leader; load through every node (`wasmraft bench`, half reads);
# the leader is cut off; the majority elects a new leader, which acknowledges `key = new-ROUND`;
# a linearizable read goes to the old leader while it is cut off; the partition heals while that
# read waits. A read that returns anything but `new-ROUND` (an error is fine) is a stale read.
#
#   sudo tests/netns/stale_read.sh [ROUNDS] [WASMRAFT_BINARY]
#
# Needs root, `ip` and `nft` (Debian: iproute2, nftables). Everything lives in namespaces named
# wrs-*, deleted on exit; nothing touches the host's own network.
set -euo pipefail

ROUNDS=${1:-10}
BIN=$(realpath "${2:-target/debug/wasmraft}")
WORK=$(mktemp -d /tmp/wrs.XXXXXX)
NET=10.77.0
HUB=wrs-hub
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in $HUB wrs-1 wrs-2 wrs-3; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

hub() { ip netns exec $HUB "$@"; }
cli() { hub "$BIN" "$@"; }

# ---------------------------------------------------------------- network
ip netns add $HUB
hub ip link add br0 type bridge
hub ip link set br0 up
hub ip addr add $NET.100/24 dev br0
hub ip link set lo up
for id in 1 2 3; do
    ns=wrs-$id
    ip netns add $ns
    ip link add veth$id netns $ns type veth peer name port$id netns $HUB
    ip netns exec $ns ip addr add $NET.$id/24 dev veth$id
    ip netns exec $ns ip link set veth$id up
    ip netns exec $ns ip link set lo up
    hub ip link set port$id master br0
    hub ip link set port$id up
done

# Drops everything between node `id` and the other nodes (the hub, where clients run, still
# reaches it).
cut() {
    local id=$1 others=()
    for other in 1 2 3; do [ "$other" = "$id" ] || others+=("$NET.$other"); done
    local set
    set=$(IFS=,; echo "${others[*]}")
    ip netns exec wrs-$id nft -f - <<EOF
table inet partition {
    chain in { type filter hook input priority 0; ip saddr { $set } drop; }
    chain out { type filter hook output priority 0; ip daddr { $set } drop; }
}
EOF
}
heal() { ip netns exec wrs-$1 nft delete table inet partition; }

# ---------------------------------------------------------------- cluster
for id in 1 2 3; do
    cat >"$WORK/node-$id.toml" <<EOF
id = $id
listen = "$NET.$id:7001"
data_dir = "node-$id"
compile_cache_dir = "compiled"
[peers]
EOF
    for other in 1 2 3; do
        [ "$other" = "$id" ] || echo "\"$other\" = \"http://$NET.$other:7001\"" >>"$WORK/node-$id.toml"
    done
    ip netns exec wrs-$id "$BIN" node --config "$WORK/node-$id.toml" >"$WORK/node-$id.log" 2>&1 &
    PIDS+=($!)
done
sleep 1
cli cluster init --endpoint http://$NET.1:7001 >/dev/null
leader() {
    for _ in $(seq 100); do
        for id in 1 2 3; do
            local l
            l=$(cli cluster status --endpoint http://$NET.$id:7001 2>/dev/null | sed -n 's/^leader *node \([0-9]*\) .*/\1/p')
            if [ -n "$l" ] && [ "$l" != "${1:-}" ] && [ "$id" != "${1:-}" ]; then echo "$l"; return; fi
        done
        sleep 0.1
    done
    echo "no leader" >&2
    exit 1
}
L=$(leader)
cli deploy kv "$(dirname "$BIN")/../plugins/kv.wasm" --endpoint http://$NET.$L:7001 >/dev/null

# ---------------------------------------------------------------- rounds
stale=0
for round in $(seq "$ROUNDS"); do
    L=$(leader)
    cli call kv "{\"op\":\"put\",\"key\":\"k\",\"value\":\"old-$round\"}" --endpoint http://$NET.$L:7001 >/dev/null
    loads=()
    for id in 1 2 3; do
        cli bench --endpoint http://$NET.$id:7001 --clients 2 --ops 1000000 --read-ratio 0.5 >/dev/null 2>&1 &
        loads+=($!)
    done
    sleep 1
    cut "$L"
    N=$(leader "$L")
    cli call kv "{\"op\":\"put\",\"key\":\"k\",\"value\":\"new-$round\"}" --endpoint http://$NET.$N:7001 >/dev/null
    # The read retries a refused attempt at the same node, as a client would, for up to 3 s.
    (
        deadline=$((SECONDS + 3))
        until cli query kv '{"op":"get","key":"k"}' --endpoint http://$NET.$L:7001 >"$WORK/read" 2>&1 ||
            [ $SECONDS -ge $deadline ]; do
            sleep 0.02
        done
    ) &
    read_pid=$!
    sleep "0.$((RANDOM % 9 + 1))"
    heal "$L"
    wait $read_pid || true
    got=$(cat "$WORK/read")
    case "$got" in
        *"new-$round"*) verdict=fresh ;;
        *"old-$round"*) verdict=STALE; stale=$((stale + 1)) ;;
        *) verdict="failed ($got)" ;;
    esac
    echo "round $round: leader $L cut, $N took over; read at $L: $verdict"
    for pid in "${loads[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
done
echo "$stale stale of $ROUNDS"
[ "$stale" -eq 0 ]
