# Sourced by the bench scripts: a plaintext 3-node `wasmraft dev` on ports 7700-7702 (peers
# 7750-7752, metrics 7800-7802).

# Starts `$1`'s cluster with its data and log in the directory `$2`, and returns once it serves;
# `$dev` is its pid. Exits the script, with the cluster's log, if it fails or takes over 120 s.
start_cluster() {
    local bin=$1 dir=$2
    "$bin" dev --base-port 7700 --insecure --data-dir "$dir/data" >"$dir/dev.log" 2>&1 &
    dev=$!
    for _ in $(seq 1 240); do
        grep -q "Ctrl-C" "$dir/dev.log" && return
        kill -0 "$dev" 2>/dev/null || { cat "$dir/dev.log" >&2; exit 1; }
        sleep 0.5
    done
    echo "error: the dev cluster did not start in 120 s" >&2
    cat "$dir/dev.log" >&2
    exit 1
}

# Stops the cluster `start_cluster` started, if it runs.
stop_cluster() {
    if [ -n "${dev:-}" ]; then
        kill -INT "$dev" 2>/dev/null || true
        wait "$dev" 2>/dev/null || true
    fi
    dev=
}
