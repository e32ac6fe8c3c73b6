#!/usr/bin/env bash
# `make run`: builds, then starts on loopback a private redis-server (unless SWITCHBOARD_REDIS
# names one), two nodes and the admin; prints the URLs and the admin token; Ctrl-C (or SIGTERM)
# stops exactly what it started, by pid, and leaves nothing running.
#
# Environment: SB_RUN_NODE_PORTS (default "8081 8082"), SB_RUN_ADMIN_PORT (9090),
# SB_RUN_REDIS_PORT (6390), SWITCHBOARD_REDIS (use that Redis instead),
# SWITCHBOARD_ADMIN_TOKEN (default: a new random token), SB_RUN_DIR (logs; default .run/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tests/build.sh build >/dev/null
dir=${SB_RUN_DIR:-$root/.run}
mkdir -p "$dir"
node_ports=(${SB_RUN_NODE_PORTS:-8081 8082})
admin_port=${SB_RUN_ADMIN_PORT:-9090}
redis_port=${SB_RUN_REDIS_PORT:-6390}
token=${SWITCHBOARD_ADMIN_TOKEN:-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')}
pids=()

stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping: ${pids[*]}"
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    echo "stopped."
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

wait_http() { # url, what
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "run: $2 did not become ready; see $dir" >&2
    exit 1
}

if [ -n "${SWITCHBOARD_REDIS:-}" ]; then
    redis_url=$SWITCHBOARD_REDIS
else
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --maxmemory-policy noeviction --dir "$dir" --loglevel warning >"$dir/redis.log" 2>&1 &
    pids+=($!)
    redis_url=redis://127.0.0.1:$redis_port
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

for i in "${!node_ports[@]}"; do
    port=${node_ports[$i]}
    build/node/switchboard-node --listen "127.0.0.1:$port" --redis "$redis_url" \
        --id "node$((i + 1))" >"$dir/node$((i + 1)).log" 2>&1 &
    pids+=($!)
done
SWITCHBOARD_ADMIN_TOKEN=$token build/admin/switchboard-admin --listen "127.0.0.1:$admin_port" \
    --redis "$redis_url" >"$dir/admin.log" 2>&1 &
pids+=($!)

for port in "${node_ports[@]}"; do wait_http "http://127.0.0.1:$port/readyz" "node on $port"; done
wait_http "http://127.0.0.1:$admin_port/readyz" "admin"

cat <<TXT

Switchboard is running (logs in $dir):
  Redis          $redis_url
$(for i in "${!node_ports[@]}"; do echo "  node$((i + 1))          ws://127.0.0.1:${node_ports[$i]}/ws   demo: http://127.0.0.1:${node_ports[$i]}/"; done)
  admin          http://127.0.0.1:$admin_port/admin/   (dashboard)
  admin token    $token
  mesh-status    curl -H 'Authorization: Bearer $token' http://127.0.0.1:$admin_port/admin/mesh-status

Press Ctrl-C to stop everything.
TXT
wait -n "${pids[@]}" || true
echo "run: a process exited; see $dir" >&2
