#!/usr/bin/env bash
# Runs the browser tests in a private network namespace (only loopback, so WebRTC stays on
# 127.0.0.1 and nothing leaves the machine): a private redis-server, two nodes and the admin,
# then client_protocol.mjs (the client against scripted fake nodes) and e2e_webrtc.mjs (the
# demo page on the real nodes). Stops exactly the processes it started. Exit status: 0 when
# every test passed.
#
#   tests/browser/run-e2e.sh          both tests
#   tests/browser/run-e2e.sh --fake   no C processes: e2e_webrtc.mjs runs against the fakes too
#
# Environment: SWITCHBOARD_BUILD (default build/), SB_ARTIFACTS (default
# tests/artifacts/browser: screenshots and the processes' logs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${SWITCHBOARD_BUILD:-$root/build}
export SB_ARTIFACTS=${SB_ARTIFACTS:-$root/tests/artifacts/browser}
fake=0
[ "${1:-}" = --fake ] && fake=1

if [ -z "${SB_E2E_IN_NETNS:-}" ]; then
    # Outside the namespace, where the npm registry is reachable.
    if [ ! -d "$here/node_modules/playwright-core" ]; then
        (cd "$here" && npm ci --no-audit --no-fund --silent)
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
mkdir -p "$SB_ARTIFACTS/logs"
tmp=$(mktemp -d /tmp/sb-e2e.XXXXXX)
pids=()

stop_all() {
    local status=$?
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # url what
    local deadline=$((SECONDS + 20))
    until curl -fsS -o /dev/null --max-time 1 "$1"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "FAIL run-e2e: $2 not ready at $1 after 20 s; logs in $SB_ARTIFACTS/logs" >&2
            return 1
        fi
        sleep 0.1
    done
}

passed=0 failed=0 skipped=0
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

if [ "$fake" = 0 ]; then
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
        --maxmemory-policy noeviction >"$SB_ARTIFACTS/logs/redis.log" 2>&1 &
    pids+=($!)
    redis="redis://127.0.0.1:$rport"

    urls=()
    for id in nA nB; do
        port=$(free_port)
        "$build/node/switchboard-node" --listen "127.0.0.1:$port" --redis "$redis" --id "$id" \
            >"$SB_ARTIFACTS/logs/node-$id.log" 2>&1 &
        pids+=($!)
        urls+=("http://127.0.0.1:$port")
    done

    aport=$(free_port)
    export SB_ADMIN_TOKEN="e2e-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    SWITCHBOARD_ADMIN_TOKEN="$SB_ADMIN_TOKEN" "$build/admin/switchboard-admin" \
        --listen "127.0.0.1:$aport" --redis "$redis" >"$SB_ARTIFACTS/logs/admin.log" 2>&1 &
    pids+=($!)
    export SB_ADMIN_URL="http://127.0.0.1:$aport"

    for u in "${urls[@]}"; do wait_ready "$u/readyz" "node"; done
    wait_ready "$SB_ADMIN_URL/readyz" "admin"
    export SB_E2E_URLS
    SB_E2E_URLS=$(IFS=,; echo "${urls[*]}")

    run_test client_protocol.mjs
    run_test e2e_webrtc.mjs
else
    run_test client_protocol.mjs
    run_test e2e_webrtc.mjs --fake
fi

echo "browser: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
