#!/usr/bin/env bash
# Runs the browser tests in a private network namespace (only loopback, so WebRTC stays on
# 127.0.0.1, nothing leaves the machine and cluster.env's fixed ports cannot collide with
# anything): `deploy/cluster.sh up` starts the local cluster there (Redis, node1..node3, the
# admin, HAProxy in front of the nodes; state in a temp dir), then client_protocol.mjs and
# client_resume.mjs (the client against scripted fake nodes), e2e_webrtc.mjs (the demo page
# through HAProxy: SB_E2E_URLS is the load balancer's URL only, SB_LB_MONITOR_URL its monitor
# port, SB_ADMIN_URL and SB_ADMIN_TOKEN the cluster's admin and its freshly generated token)
# and, last since it kills a node, e2e_resume.mjs (a call survives kill -9 of one page's node,
# then the drain of the other's; it reads the node pids cluster.sh recorded in SB_CLUSTER_DIR).
# Then `cluster.sh down`, which stops exactly the pids `up` recorded (also on failure or ^C,
# from the EXIT trap). Then a second cluster the same way, for e2e_peerjs.mjs (the real peerjs
# client through HAProxy, issue 16; it kills a node too, and needs two alive at its start), and
# its `down`. Last, a check that nothing else still runs in the namespace. Exit status: 0 when every
# test passed. Output: `PASS/FAIL/SKIP name` lines, then `browser: N passed, N failed, N
# skipped` (tests/run-all.sh reads it).
#
#   tests/browser/run-e2e.sh          every test
#   tests/browser/run-e2e.sh --fake   no C processes: client_protocol.mjs, client_resume.mjs,
#                                     e2e_webrtc.mjs and e2e_resume.mjs against the fakes,
#                                     e2e_peerjs.mjs against the reference PeerJS server
#                                     (peer 1.0.2 of tests/bench/js; its steps that need
#                                     Switchboard are skipped)
#
# Environment: SWITCHBOARD_BUILD (default build/), SB_ARTIFACTS (default
# tests/artifacts/browser: screenshots; logs/ gets the cluster's logs, copied there after
# `down`: redis, node1..3, admin, lb (HAProxy's request log) and cluster.log, the output of
# cluster.sh with the token masked; logs/peerjs/ the same of the PeerJS cluster).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${SWITCHBOARD_BUILD:-$root/build}
export SB_ARTIFACTS=${SB_ARTIFACTS:-$root/tests/artifacts/browser}
fake=0
[ "${1:-}" = --fake ] && fake=1

if [ -z "${SB_E2E_IN_NETNS:-}" ]; then
    # Outside the namespace, where the npm registry is reachable.
    if [ ! -d "$here/node_modules/playwright-core" ] || [ ! -d "$here/node_modules/peerjs" ]; then
        (cd "$here" && npm ci --no-audit --no-fund --silent)
    fi
    # --fake runs e2e_peerjs.mjs against the reference PeerJS server of the benchmark.
    if [ "$fake" = 1 ] && [ ! -d "$root/tests/bench/js/node_modules/peer" ]; then
        (cd "$root/tests/bench/js" && npm ci --no-audit --no-fund --silent)
    fi
    if [ "$fake" = 0 ]; then
        for b in "$build/node/switchboard-node" "$build/admin/switchboard-admin"; do
            if [ ! -x "$b" ]; then
                echo "FAIL run-e2e: $b is missing; build first (cmake -B build && cmake --build build)" >&2
                echo "0 passed, 1 failed"
                exit 1
            fi
        done
    fi
    unshare_flags=(-n)
    [ "$(id -u)" -eq 0 ] || unshare_flags=(-r -n) # a user namespace makes us root in it
    exec unshare "${unshare_flags[@]}" env SB_E2E_IN_NETNS=1 bash "$0" "$@"
fi

# ---- inside the namespace ----
ip link set lo up
logs="$SB_ARTIFACTS/logs"
mkdir -p "$logs"
tmp=$(mktemp -d /tmp/sb-e2e.XXXXXX)
export SWITCHBOARD_BUILD="$build"
cluster=0 # 1 from `cluster.sh up` until `cluster.sh down`
cluster_logs=$logs

# Starts a cluster (`cluster.sh up`) in the state dir $1, its logs to $2 (cluster.log: the
# output of cluster.sh), and exports what the tests read (SB_E2E_URLS, SB_LB_MONITOR_URL,
# SB_ADMIN_URL, SB_ADMIN_TOKEN, SB_CLUSTER_DIR). HAProxy on its cluster.env ports (nothing else
# listens in this namespace), a fresh random admin token (stored in the state dir), the build
# under test. Returns the status of `cluster.sh up`.
start_cluster() {
    export SB_CLUSTER_DIR=$1
    cluster_logs=$2
    mkdir -p "$cluster_logs"
    cluster=1
    local t0=$SECONDS
    env -u SWITCHBOARD_ADMIN_TOKEN "$root/deploy/cluster.sh" up >"$cluster_logs/cluster.log" 2>&1 || return
    declare -A port=()
    while IFS='=' read -r k v; do port[$k]=$v; done <"$SB_CLUSTER_DIR/ports.env"
    export SB_E2E_URLS="http://127.0.0.1:${port[SB_LB_PORT]}"
    export SB_LB_MONITOR_URL="http://127.0.0.1:${port[SB_LB_MONITOR_PORT]}"
    export SB_ADMIN_URL="http://127.0.0.1:${port[SB_ADMIN_PORT]}"
    export SB_ADMIN_TOKEN
    SB_ADMIN_TOKEN=$(cat "$SB_CLUSTER_DIR/admin.token")
    sed -i "s/$SB_ADMIN_TOKEN/<token>/g" "$cluster_logs/cluster.log"
    echo "# cluster up in $((SECONDS - t0)) s (deploy/cluster.sh): HAProxy $SB_E2E_URLS" \
         "(monitor $SB_LB_MONITOR_URL), nodes node1..node3 on" \
         "${port[SB_NODE1_PORT]} ${port[SB_NODE2_PORT]} ${port[SB_NODE3_PORT]}, admin $SB_ADMIN_URL," \
         "redis ${port[SB_REDIS_PORT]}; logs in $cluster_logs"
}

# Stops the cluster (cluster.sh stops exactly the pids it recorded) and copies its logs to
# those of start_cluster. Returns the status of `cluster.sh down`.
stop_cluster() {
    [ "$cluster" = 1 ] || return 0
    cluster=0
    local status=0
    "$root/deploy/cluster.sh" down >>"$cluster_logs/cluster.log" 2>&1 || status=$?
    cp "$SB_CLUSTER_DIR"/logs/*.log "$cluster_logs/" 2>/dev/null || true
    return "$status"
}

# stop_cluster, counted as a failure named $1 when `cluster.sh down` fails.
stop_cluster_checked() {
    local t0=$SECONDS
    if stop_cluster; then
        echo "# cluster down in $((SECONDS - t0)) s"
    else
        fail "$1" "deploy/cluster.sh down failed; see $cluster_logs/cluster.log"
    fi
}

on_exit() {
    local status=$?
    stop_cluster || status=1
    rm -rf "$tmp"
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

passed=0 failed=0 skipped=0
fail() { # name message
    echo "FAIL $1: $2"
    failed=$((failed + 1))
}

run_test() { # file [args]
    local out="$tmp/out.$1.txt" status=0
    (cd "$here" && node "$@") 2>&1 | tee "$out" || status=$?
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1 || true)
    if [ -n "$line" ]; then
        read -r p _ f _ s _ <<<"${line//,/}"
        passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + ${s:-0}))
    fi
    if [ "$status" -ne 0 ] && [ -z "$line" ]; then failed=$((failed + 1)); fi
}

# Sets `left` to whatever still runs in this namespace besides this shell: after the tests and
# `cluster.sh down` nothing should. A leftover is reported, not killed (cluster.sh's recorded
# pids are the only ones this script stops). Builtins only, so the check does not see itself.
find_leftovers() {
    local p stat arg0
    left=""
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" != "$$" ] && [ "$p/ns/net" -ef "/proc/$$/ns/net" ] 2>/dev/null || continue
        IFS= read -r stat <"$p/stat" 2>/dev/null || continue
        stat=${stat##*) }
        [ "${stat%% *}" != Z ] || continue
        arg0="?"
        IFS= read -r -d '' arg0 <"$p/cmdline" 2>/dev/null || true
        left+=" ${p#/proc/}:${arg0:-?}"
    done
}

if [ "$fake" = 0 ]; then
    if start_cluster "$tmp/cluster" "$logs"; then
        run_test client_protocol.mjs
        run_test client_resume.mjs
        run_test e2e_webrtc.mjs
        # Last on this cluster: it kills one node (kill -9) and drains another.
        run_test e2e_resume.mjs
    else
        fail run-e2e-cluster-up "deploy/cluster.sh up failed; its output:"
        sed 's/^/#   /' "$logs/cluster.log"
        run_test client_protocol.mjs
        run_test client_resume.mjs
    fi
    stop_cluster_checked run-e2e-cluster-down
    # PeerJS (issue 16) with the real peerjs client, on a cluster of its own (e2e_resume.mjs
    # left one node of the first one, and this test kills a node too). Logs in logs/peerjs/.
    if start_cluster "$tmp/cluster-peerjs" "$logs/peerjs"; then
        run_test e2e_peerjs.mjs
    else
        fail run-e2e-cluster-up-peerjs "deploy/cluster.sh up failed; its output:"
        sed 's/^/#   /' "$logs/peerjs/cluster.log"
    fi
    stop_cluster_checked run-e2e-cluster-down-peerjs
else
    run_test client_protocol.mjs
    run_test client_resume.mjs
    run_test e2e_webrtc.mjs --fake
    run_test e2e_resume.mjs --fake
    PEERJS_TARGET=reference run_test e2e_peerjs.mjs
fi

find_leftovers
[ -z "$left" ] || fail run-e2e-cleanup "still running in the test's network namespace (pid:command):$left"

echo "browser: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
