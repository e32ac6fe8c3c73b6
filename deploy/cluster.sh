#!/usr/bin/env bash
# The native twin of docker-compose.yml: Redis, three nodes, the admin and HAProxy in front,
# all on 127.0.0.1, from the same deploy/cluster.env and deploy/haproxy.cfg.
#
#   deploy/cluster.sh up       start everything, wait until healthy, print URLs and the token
#   deploy/cluster.sh status   pids, health and URLs of a running cluster (exit 1 if unhealthy)
#   deploy/cluster.sh down     stop exactly the processes `up` started (by pid), Redis last
#   deploy/cluster.sh plan     print what `up` would run (service, argv, env, health, ...)
#
# Redis Cluster variant: SB_REDIS_MODE=cluster deploy/cluster.sh up (the twin of
# docker-compose.yml + docker-compose.cluster.yml): six redis-server --cluster-enabled yes
# (redis, redis2..redis6), formed into 3 primaries + 3 replicas by deploy/redis-cluster-init.sh,
# the nodes and the admin given redis-cluster:// seeds. `up` records the mode in the state dir;
# status and down follow it.
#
# Environment (all optional):
#   SB_REDIS_MODE    single (default: one Redis) or cluster (only read by up and plan)
#   SB_CLUSTER_DIR   state dir: pids, ports, logs, token (default: <repo>/.cluster)
#   SWITCHBOARD_BUILD  build dir (default: <repo>/build); SB_NODE_BIN / SB_ADMIN_BIN override
#                    the binaries, SB_REDIS_BIN / SB_HAPROXY_BIN the servers
#   SB_LB_PORT SB_ADMIN_PORT SB_LB_MONITOR_PORT SB_REDIS_PORT SB_NODE1_PORT..SB_NODE3_PORT
#                    a port, or "auto" for a free one; SB_PORTS=auto makes every unset one auto.
#                    Defaults from cluster.env (node i: SB_NODE_PORT + i).
#                    Cluster mode adds SB_REDIS2_PORT..SB_REDIS6_PORT (default SB_REDIS_PORT +
#                    i - 1) and each one's cluster bus port SB_REDIS_BUS_PORT,
#                    SB_REDIS2_BUS_PORT.. (default its port + 10000).
#   SWITCHBOARD_ADMIN_TOKEN  the admin token; else the one stored in the state dir; else a new
#                    random one (stored there, mode 0600)
# Every service gets only cluster.env plus its own variables (env -i), as in a container, so a
# stray SWITCHBOARD_* in the caller's shell cannot make this cluster differ from compose.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE="$ROOT/deploy/cluster.env"
HAPROXY_CFG="$ROOT/deploy/haproxy.cfg"
STATE=${SB_CLUSTER_DIR:-$ROOT/.cluster}
BUILD=${SWITCHBOARD_BUILD:-$ROOT/build}
NODE_BIN=${SB_NODE_BIN:-$BUILD/node/switchboard-node}
ADMIN_BIN=${SB_ADMIN_BIN:-$BUILD/admin/switchboard-admin}
REDIS_BIN=${SB_REDIS_BIN:-redis-server}
CLUSTER_INIT="$ROOT/deploy/redis-cluster-init.sh"
HAPROXY_BIN=${SB_HAPROXY_BIN:-haproxy}
HOST=127.0.0.1
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

NODES=(node1 node2 node3)
# set_mode single|cluster: the services (start order; `down` goes backwards; the same names as
# the compose services) and ports of that variant. redis-init is a one-shot step, not a process
# that stays (compose: a service that exits 0, which the nodes and the admin wait for).
set_mode() {
    MODE=$1
    case "$MODE" in
        single) REDIS_NODES=(redis)
                REDIS_PORT_VARS=(SB_REDIS_PORT)
                ONESHOTS=() ;;
        cluster) REDIS_NODES=(redis redis2 redis3 redis4 redis5 redis6)
                 REDIS_PORT_VARS=(SB_REDIS_PORT SB_REDIS2_PORT SB_REDIS3_PORT SB_REDIS4_PORT
                                  SB_REDIS5_PORT SB_REDIS6_PORT SB_REDIS_BUS_PORT
                                  SB_REDIS2_BUS_PORT SB_REDIS3_BUS_PORT SB_REDIS4_BUS_PORT
                                  SB_REDIS5_BUS_PORT SB_REDIS6_BUS_PORT)
                 ONESHOTS=(redis-init) ;;
        *) die "SB_REDIS_MODE: '$MODE' is not single or cluster" ;;
    esac
    SERVICES=("${REDIS_NODES[@]}" "${ONESHOTS[@]}" "${NODES[@]}" admin lb)
    PORT_VARS=("${REDIS_PORT_VARS[@]}" SB_NODE1_PORT SB_NODE2_PORT SB_NODE3_PORT SB_ADMIN_PORT
               SB_LB_PORT SB_LB_MONITOR_PORT)
}

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

# ---- configuration ------------------------------------------------------------------------

declare -A CFG=()    # cluster.env, in file order in CFG_KEYS
CFG_KEYS=()
load_env_file() {
    local line n=0
    [ -r "$ENV_FILE" ] || die "cannot read $ENV_FILE"
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        case "$line" in '' | '#'*) continue ;; esac
        # The format compose and bash read alike: KEY=value, no quotes, blanks or expansions.
        [[ "$line" =~ ^([A-Z_][A-Z0-9_]*)=([^[:space:]\"\'\$\`]*)$ ]] ||
            die "$ENV_FILE:$n: not KEY=value (no quotes, spaces or \$): $line"
        [ -z "${CFG[${BASH_REMATCH[1]}]+x}" ] || die "$ENV_FILE:$n: ${BASH_REMATCH[1]} set twice"
        CFG[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
        CFG_KEYS+=("${BASH_REMATCH[1]}")
    done <"$ENV_FILE"
    local k
    for k in SB_LB_PORT SB_ADMIN_PORT SB_LB_MONITOR_PORT SB_NODE_PORT SB_REDIS_PORT \
             SB_REDIS_MAXMEMORY SB_REDIS_CLUSTER_NODE_TIMEOUT_MS SWITCHBOARD_DRAIN_TIMEOUT_MS; do
        [ -n "${CFG[$k]:-}" ] || die "$ENV_FILE: $k is missing"
    done
}

declare -A PORT=()
declare -A TAKEN=()
port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
pick_free_port() {
    local p i
    for i in $(seq 1 500); do
        # Below Linux's ephemeral range (32768-60999), where outgoing connections take ports.
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        [ -z "${TAKEN[$p]:-}" ] && ! port_in_use "$p" && { echo "$p"; return; }
    done
    die "no free port found"
}

# The port each service uses: the caller's SB_*_PORT, else SB_PORTS, else cluster.env.
resolve_ports() {
    local v want i
    for v in "${PORT_VARS[@]}"; do
        want=${!v:-${SB_PORTS:-}}
        if [ -z "$want" ]; then
            case "$v" in
                SB_NODE?_PORT) i=${v#SB_NODE}; i=${i%_PORT}; want=$((CFG[SB_NODE_PORT] + i)) ;;
                SB_REDIS?_PORT) i=${v#SB_REDIS}; i=${i%_PORT}
                                want=$((CFG[SB_REDIS_PORT] + i - 1)) ;;
                SB_REDIS_BUS_PORT) want=$((CFG[SB_REDIS_PORT] + 10000)) ;;
                SB_REDIS?_BUS_PORT) i=${v#SB_REDIS}; i=${i%_BUS_PORT}
                                    want=$((CFG[SB_REDIS_PORT] + i - 1 + 10000)) ;;
                *) want=${CFG[$v]} ;;
            esac
        fi
        if [ "$want" = auto ] || [ "$want" = 0 ]; then
            want=$(pick_free_port)
        fi
        if ! [[ "$want" =~ ^[0-9]+$ ]] || [ "$want" -lt 1 ] || [ "$want" -gt 65535 ]; then
            die "$v: '$want' is not a port (or auto)"
        fi
        [ -z "${TAKEN[$want]:-}" ] || die "$v: port $want is given twice"
        TAKEN[$want]=1
        PORT[$v]=$want
    done
}

load_ports() {
    [ -r "$STATE/ports.env" ] || return 1
    local line
    while IFS= read -r line; do
        [[ "$line" =~ ^(SB_[A-Z0-9_]+_PORT)=([0-9]+)$ ]] && PORT[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
    done <"$STATE/ports.env"
    return 0
}

load_token() {
    if [ -n "${SWITCHBOARD_ADMIN_TOKEN:-}" ]; then
        TOKEN=$SWITCHBOARD_ADMIN_TOKEN
    elif [ -s "$STATE/admin.token" ]; then
        TOKEN=$(cat "$STATE/admin.token")
    else
        TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
    fi
    (umask 077 && printf '%s\n' "$TOKEN" >"$STATE/admin.token")
}

node_port_var() { echo "SB_NODE${1#node}_PORT"; }
# redis -> SB_REDIS_PORT, redis4 -> SB_REDIS4_PORT; redis_port_var NAME _BUS for the bus port.
redis_port_var() { echo "SB_REDIS${1#redis}${2:-}_PORT"; }

# The URL the nodes and the admin are given: one Redis, or every cluster node as a seed.
redis_url() {
    local name sep=""
    if [ "$MODE" = single ]; then echo "redis://$HOST:${PORT[SB_REDIS_PORT]}"; return; fi
    printf 'redis-cluster://'
    for name in "${REDIS_NODES[@]}"; do
        printf '%s%s:%s' "$sep" "$HOST" "${PORT[$(redis_port_var "$name")]}"
        sep=,
    done
    echo
}

# ---- what each service runs: used by `up` and printed by `plan` ----------------------------
# svc_argv NAME -> ARGV, svc_env NAME -> ENVV (cluster.env first, then the service's own),
# svc_health NAME -> "http PORT PATH" or "redis PORT", svc_depends NAME -> names,
# svc_publish NAME -> ports a client uses ("" for internal services).

# One Redis, or one cluster node (the options compose's redis services run with, plus where it
# listens and keeps its files).
svc_redis_argv() {
    local dir="$STATE/redis"
    [ "$MODE" = single ] || dir="$STATE/redis/$1"
    ARGV=("$REDIS_BIN" --port "${PORT[$(redis_port_var "$1")]}" --bind "$HOST"
          --dir "$dir" --daemonize no
          --save "" --appendonly no
          --maxmemory "${CFG[SB_REDIS_MAXMEMORY]}" --maxmemory-policy noeviction)
    [ "$MODE" = single ] && return
    ARGV+=(--cluster-port "${PORT[$(redis_port_var "$1" _BUS)]}"
           --cluster-config-file "$dir/nodes.conf"
           --protected-mode no --cluster-enabled yes
           --cluster-node-timeout "${CFG[SB_REDIS_CLUSTER_NODE_TIMEOUT_MS]}"
           --cluster-require-full-coverage no --repl-diskless-sync-delay 0)
}

svc_argv() {
    local name
    case "$1" in
        redis-init) ARGV=("$CLUSTER_INIT" -r 1)
                    for name in "${REDIS_NODES[@]}"; do
                        ARGV+=("$HOST:${PORT[$(redis_port_var "$name")]}")
                    done ;;
        redis*) svc_redis_argv "$1" ;;
        node?) ARGV=("$NODE_BIN") ;;
        admin) ARGV=("$ADMIN_BIN") ;;
        # -db: stay in the foreground, one process, so its pid is the one we recorded.
        lb) ARGV=("$HAPROXY_BIN" -db -f "$HAPROXY_CFG") ;;
        *) die "unknown service $1" ;;
    esac
}

shared_env() {
    local k
    for k in "${CFG_KEYS[@]}"; do ENVV+=("$k=${CFG[$k]}"); done
}

svc_env() {
    ENVV=("PATH=$BASE_PATH")
    local redis_url
    redis_url=$(redis_url)
    case "$1" in
        redis*) ;;
        node?) shared_env
               ENVV+=("SWITCHBOARD_ID=$1"
                      "SWITCHBOARD_LISTEN=$HOST:${PORT[$(node_port_var "$1")]}"
                      "SWITCHBOARD_REDIS=$redis_url") ;;
        admin) shared_env
               ENVV+=("SWITCHBOARD_ADMIN_LISTEN=$HOST:${PORT[SB_ADMIN_PORT]}"
                      "SWITCHBOARD_ADMIN_REDIS=$redis_url"
                      "SWITCHBOARD_ADMIN_TOKEN=${TOKEN}") ;;
        lb)    ENVV+=("SB_LB_BIND=$HOST:${PORT[SB_LB_PORT]}"
                      "SB_LB_MONITOR_BIND=$HOST:${PORT[SB_LB_MONITOR_PORT]}"
                      "SB_NODE1_ADDR=$HOST:${PORT[SB_NODE1_PORT]}"
                      "SB_NODE2_ADDR=$HOST:${PORT[SB_NODE2_PORT]}"
                      "SB_NODE3_ADDR=$HOST:${PORT[SB_NODE3_PORT]}") ;;
    esac
}

svc_health() {
    case "$1" in
        redis-init) echo "exit 0" ;;
        redis*) if [ "$MODE" = single ]; then echo "redis ${PORT[SB_REDIS_PORT]}"
                else echo "redis-cluster ${PORT[$(redis_port_var "$1")]}"; fi ;;
        node?) echo "http ${PORT[$(node_port_var "$1")]} /readyz" ;;
        admin) echo "http ${PORT[SB_ADMIN_PORT]} /readyz" ;;
        lb)    echo "http ${PORT[SB_LB_MONITOR_PORT]} /healthz" ;;
    esac
}

svc_depends() {
    case "$1" in
        redis-init) echo "${REDIS_NODES[*]}" ;;
        redis*) echo "" ;;
        node? | admin) echo "redis ${ONESHOTS[*]}" ;;
        lb) echo "${NODES[*]}" ;;
    esac
}

svc_publish() {
    case "$1" in
        lb) echo "${PORT[SB_LB_PORT]}" ;;
        admin) echo "${PORT[SB_ADMIN_PORT]}" ;;
        *) echo "" ;;
    esac
}

# ---- processes ----------------------------------------------------------------------------

# "STATE STARTTIME" of a pid from /proc (starttime survives exec and tells a recycled pid
# apart), or nothing when there is no such process.
proc_stamp() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    # shellcheck disable=SC2086  # split the fields on purpose
    set -- $rest
    echo "$1 ${20}"
}

# The pid recorded for a service, if that process is still the one we started: alive, not a
# zombie, and with the start time recorded (a recycled pid is left alone).
live_pid() {
    local f="$STATE/pids/$1" pid start st now
    [ -r "$f" ] || return 1
    read -r pid start _ <"$f" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    read -r st now <<<"$(proc_stamp "$pid")" || return 1
    [ "$st" != Z ] && [ "$now" = "$start" ] || return 1
    echo "$pid"
}

healthy() {
    local kind port path
    read -r kind port path <<<"$(svc_health "$1")"
    case "$kind" in
        redis) [ "$(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null)" = PONG ] ;;
        redis-cluster) redis-cli -h "$HOST" -p "$port" cluster info 2>/dev/null |
                           grep -q '^cluster_state:ok' ;;
        http) curl -fsS -m 1 -o /dev/null "http://$HOST:$port$path" 2>/dev/null ;;
    esac
}

start_service() {
    local name=$1 exe pid
    svc_argv "$name"
    svc_env "$name"
    exe=$(command -v "${ARGV[0]}" || true)
    if [ -z "$exe" ] || [ ! -x "$exe" ]; then die "$name: ${ARGV[0]} is not an executable"; fi
    # setsid: its own session, so closing the terminal (SIGHUP) or ^C in it leaves the cluster
    # running until `down`. A background job is never a group leader, so setsid does not fork;
    # it and env exec, and $! is the service's pid.
    setsid env -i "${ENVV[@]}" "${ARGV[@]}" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
    pid=$!
    local st start
    read -r st start <<<"$(proc_stamp "$pid")" || true
    echo "$pid ${start:-0} $exe" >"$STATE/pids/$name"
    if ! live_pid "$name" >/dev/null; then
        tail -n 20 "$STATE/logs/$name.log" >&2
        die "$name exited at start"
    fi
}

wait_healthy() {
    local name=$1 timeout=$2 deadline pid
    deadline=$((SECONDS + timeout))
    while :; do
        healthy "$name" && return 0
        pid=$(live_pid "$name") || { log "$name exited; last lines of its log:"
                                     tail -n 30 "$STATE/logs/$name.log" >&2; return 1; }
        [ "$SECONDS" -lt "$deadline" ] || { log "$name (pid $pid) not healthy after ${timeout}s" \
                                            "($(svc_health "$name")); last lines of its log:"
                                            tail -n 30 "$STATE/logs/$name.log" >&2; return 1; }
        sleep 0.2
    done
}

# SIGTERM the given services at once, wait up to $2 s for all of them, then SIGKILL the rest.
stop_services() {
    local names=$1 timeout=$2 name pid deadline left
    declare -A pids=()
    for name in $names; do
        pid=$(live_pid "$name") || { rm -f "$STATE/pids/$name"; continue; }
        pids[$name]=$pid
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + timeout))
    while :; do
        left=""
        for name in "${!pids[@]}"; do
            if live_pid "$name" >/dev/null; then left+=" $name"; fi
        done
        [ -n "$left" ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for name in $left; do
                log "$name (pid ${pids[$name]}) ignored SIGTERM for ${timeout}s: SIGKILL"
                kill -KILL "${pids[$name]}" 2>/dev/null || true
            done
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    for name in "${!pids[@]}"; do
        # Reap the zombie if it is our child (it is not after `up` returned); ignore errors.
        wait "${pids[$name]}" 2>/dev/null || true
        rm -f "$STATE/pids/$name"
    done
}

stop_all() {
    local drain_s=$(( (CFG[SWITCHBOARD_DRAIN_TIMEOUT_MS] + 999) / 1000 ))
    stop_services "lb" 10
    # The nodes drain (1001 to their clients) for up to the drain timeout.
    stop_services "${NODES[*]}" $((drain_s + 5))
    stop_services "admin" 10
    stop_services "${REDIS_NODES[*]}" 10
}

# Any recorded process still running, whatever the mode it was started in.
any_running() {
    local f
    for f in "$STATE"/pids/*; do
        [ -e "$f" ] || continue
        live_pid "$(basename "$f")" >/dev/null && return 0
    done
    return 1
}

# A one-shot step (redis-init): run to its end like a service (env -i, its own log), in the
# foreground; its exit status is its health.
run_oneshot() {
    local name=$1
    svc_argv "$name"
    svc_env "$name"
    if ! env -i "${ENVV[@]}" "${ARGV[@]}" </dev/null >>"$STATE/logs/$name.log" 2>&1; then
        tail -n 30 "$STATE/logs/$name.log" >&2
        die "$name failed"
    fi
}

# "primary" or "replica" (cluster mode), from the node itself.
redis_role() {
    case "$(redis-cli -h "$HOST" -p "${PORT[$(redis_port_var "$1")]}" role 2>/dev/null | head -n 1)" in
        master) echo primary ;;
        slave) echo replica ;;
        *) echo "?" ;;
    esac
}

print_urls() {
    cat <<EOF
Switchboard cluster (state in $STATE)
  demo page       http://$HOST:${PORT[SB_LB_PORT]}/
  WebSocket       ws://$HOST:${PORT[SB_LB_PORT]}/ws      (via HAProxy, leastconn over 3 nodes)
  admin           http://$HOST:${PORT[SB_ADMIN_PORT]}/admin/
  admin token     $TOKEN
                  (also in $STATE/admin.token)
  mesh status     curl -H "Authorization: Bearer \$(cat $STATE/admin.token)" http://$HOST:${PORT[SB_ADMIN_PORT]}/admin/mesh-status
  LB health       http://$HOST:${PORT[SB_LB_MONITOR_PORT]}/healthz   metrics: /metrics
  nodes           ${NODES[0]} http://$HOST:${PORT[SB_NODE1_PORT]}  ${NODES[1]} http://$HOST:${PORT[SB_NODE2_PORT]}  ${NODES[2]} http://$HOST:${PORT[SB_NODE3_PORT]}  (/readyz /metrics)
  redis           $(redis_url)
  logs            $STATE/logs/
  stop with       $0 down
EOF
}

# ---- commands -----------------------------------------------------------------------------

cmd_up() {
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/redis"
    if any_running; then die "a cluster is already running from $STATE: run '$0 down' first"; fi
    rm -f "$STATE"/pids/*
    command -v "$REDIS_BIN" >/dev/null || die "$REDIS_BIN not found (deploy/install-deps.sh)"
    command -v "$HAPROXY_BIN" >/dev/null || die "$HAPROXY_BIN not found (deploy/install-deps.sh)"
    command -v redis-cli >/dev/null || die "redis-cli not found (deploy/install-deps.sh)"
    command -v curl >/dev/null || die "curl not found (deploy/install-deps.sh)"
    [ -x "$NODE_BIN" ] || die "no node binary at $NODE_BIN (build first, or set SB_NODE_BIN)"
    [ -x "$ADMIN_BIN" ] || die "no admin binary at $ADMIN_BIN (build first, or set SB_ADMIN_BIN)"
    resolve_ports
    local v
    for v in "${PORT_VARS[@]}"; do
        if port_in_use "${PORT[$v]}"; then
            die "$v: port ${PORT[$v]} on $HOST is in use (set $v=<port>, $v=auto or SB_PORTS=auto)"
        fi
    done
    : >"$STATE/ports.env"
    for v in "${PORT_VARS[@]}"; do echo "$v=${PORT[$v]}" >>"$STATE/ports.env"; done
    echo "$MODE" >"$STATE/mode"
    load_token

    # On any failure from here on (die, set -e, a signal), stop what was started.
    trap 'log "start failed: stopping what was started"; stop_all; rm -f "$STATE/ports.env" "$STATE/mode"' EXIT
    trap 'exit 130' INT TERM
    local name
    if [ "$MODE" = cluster ]; then
        # A new cluster every time, as a single Redis starts empty: no nodes.conf of a previous
        # run (its nodes would come back as members of a cluster that is gone).
        for name in "${REDIS_NODES[@]}"; do
            mkdir -p "$STATE/redis/$name"
            rm -f "$STATE/redis/$name/nodes.conf"
        done
        for name in "${REDIS_NODES[@]}"; do start_service "$name"; done
        run_oneshot redis-init
    else
        start_service redis
    fi
    for name in "${REDIS_NODES[@]}"; do wait_healthy "$name" 10; done
    for name in "${NODES[@]}"; do start_service "$name"; done
    for name in "${NODES[@]}"; do wait_healthy "$name" 20; done
    start_service admin
    wait_healthy admin 20
    start_service lb
    wait_healthy lb 15
    trap - EXIT INT TERM
    print_urls
}

cmd_down() {
    if [ ! -d "$STATE/pids" ]; then log "nothing to stop in $STATE"; return 0; fi
    stop_all
    local name left=""
    for name in "${SERVICES[@]}"; do
        if live_pid "$name" >/dev/null; then left+=" $name"; fi
    done
    [ -z "$left" ] || die "still running:$left"
    rm -f "$STATE/ports.env" "$STATE/mode"
    log "stopped (logs kept in $STATE/logs)"
}

cmd_status() {
    load_ports || { echo "not running (no $STATE/ports.env)"; return 3; }
    TOKEN=$(cat "$STATE/admin.token" 2>/dev/null || echo "?")
    local name pid ok=0 state role
    printf '%-8s %-8s %s\n' SERVICE PID STATE
    for name in "${SERVICES[@]}"; do
        [[ " ${ONESHOTS[*]} " != *" $name "* ]] || continue
        role=""
        if pid=$(live_pid "$name"); then
            if healthy "$name"; then state="healthy"; else state="UNHEALTHY"; ok=1; fi
            if [ "$MODE" = cluster ] && [[ "$name" == redis* ]]; then role=" $(redis_role "$name")"; fi
        else
            pid="-"; state="STOPPED"; ok=1
        fi
        printf '%-8s %-8s %s (%s)%s\n' "$name" "$pid" "$state" "$(svc_health "$name")" "$role"
    done
    echo
    print_urls
    return $ok
}

# One line per fact, tab-separated: SERVICE  KIND  VALUE. Kinds: argv (in order), env,
# health ("redis PORT" | "redis-cluster PORT" (cluster_state:ok) | "http PORT PATH" |
# "exit 0" (a one-shot that must succeed)), depends, publish. Secrets are masked.
cmd_plan() {
    resolve_ports
    TOKEN="<secret>"
    local name a e d
    for name in "${SERVICES[@]}"; do
        svc_argv "$name"
        svc_env "$name"
        for a in "${ARGV[@]}"; do printf '%s\targv\t%s\n' "$name" "$a"; done
        for e in "${ENVV[@]}"; do printf '%s\tenv\t%s\n' "$name" "$e"; done
        printf '%s\thealth\t%s\n' "$name" "$(svc_health "$name")"
        for d in $(svc_depends "$name"); do printf '%s\tdepends\t%s\n' "$name" "$d"; done
        d=$(svc_publish "$name")
        [ -z "$d" ] || printf '%s\tpublish\t%s\n' "$name" "$d"
    done
}

load_env_file
case "${1:-}" in
    up | plan) set_mode "${SB_REDIS_MODE:-single}" ;;
    *) set_mode "$(cat "$STATE/mode" 2>/dev/null || echo single)" ;;
esac
case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    plan) cmd_plan ;;
    *) echo "usage: $0 up|down|status|plan" >&2; exit 2 ;;
esac
