#!/bin/sh
# Forms a Redis Cluster from empty `redis-server --cluster-enabled yes` processes, once, and
# waits until it is whole. Both ways of running the cluster variant run this very file:
# docker-compose.cluster.yml (service redis-init, the file mounted read-only) and
# deploy/cluster.sh (SB_REDIS_MODE=cluster), so the two cannot form it differently.
#
#   redis-cluster-init.sh [-r REPLICAS] [-t TIMEOUT_S] HOST:PORT...
#
# 1. waits (at most TIMEOUT_S, default 60) until every address answers PING;
# 2. if the first one already says cluster_state:ok and knows every address, stops here
#    (a second `docker compose up` on a running stack must not fail);
# 3. redis-cli --cluster create ADDR... --cluster-replicas REPLICAS (default 1) --cluster-yes:
#    the first N / (1 + REPLICAS) become primaries with the slots split evenly;
# 4. waits until every node says cluster_state:ok and every replica's link to its primary is
#    up (a replica that has not synced cannot take over), then prints the roles.
# Host names are resolved to IPv4 addresses first: CLUSTER MEET takes addresses only (Redis 7.0).
# A password: set REDISCLI_AUTH in the environment (redis-cli reads it). POSIX sh, redis-cli
# and getent only: it runs in the redis image as well as on the host.
set -eu

replicas=1
timeout=60
while getopts r:t: opt; do
    case $opt in
    r) replicas=$OPTARG ;;
    t) timeout=$OPTARG ;;
    *) echo "usage: $0 [-r REPLICAS] [-t TIMEOUT_S] HOST:PORT..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 3 ] || { echo "redis-cluster-init: at least 3 addresses" >&2; exit 2; }

log() { echo "redis-cluster-init: $*" >&2; }
deadline=$(($(date +%s) + timeout))
expired() { [ "$(date +%s)" -ge "$deadline" ]; }
cli() { a=$1; shift; redis-cli --no-auth-warning -h "${a%:*}" -p "${a##*:}" "$@" 2>/dev/null; }

# Resolve every HOST:PORT to IP:PORT (waiting for the name too: a container's name is
# registered when it starts).
addrs=""
for hp in "$@"; do
    host=${hp%:*}
    port=${hp##*:}
    case $host in
    *[!0-9.]*)
        while :; do
            ip=$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')
            [ -n "$ip" ] && break
            expired && { log "cannot resolve $host"; exit 1; }
            sleep 0.2
        done ;;
    *) ip=$host ;;
    esac
    addrs="$addrs $ip:$port"
done

for a in $addrs; do
    until [ "$(cli "$a" ping)" = PONG ]; do
        expired && { log "$a does not answer PING"; exit 1; }
        sleep 0.2
    done
done

# shellcheck disable=SC2086  # split on purpose: the addresses have no blanks
set -- $addrs
info=$(cli "$1" cluster info | tr -d '\r')
if echo "$info" | grep -q '^cluster_state:ok$' &&
    echo "$info" | grep -q "^cluster_known_nodes:$#\$"; then
    log "already formed ($# nodes, cluster_state:ok): nothing to do"
    exit 0
fi

log "creating: $* (replicas per primary: $replicas)"
redis-cli --no-auth-warning --cluster create "$@" --cluster-replicas "$replicas" --cluster-yes \
    >&2 || { log "redis-cli --cluster create failed"; exit 1; }

for a in $addrs; do
    while :; do
        info=$(cli "$a" cluster info | tr -d '\r')
        repl=$(cli "$a" info replication | tr -d '\r')
        if echo "$info" | grep -q '^cluster_state:ok$' &&
            { echo "$repl" | grep -q '^role:master$' ||
              echo "$repl" | grep -q '^master_link_status:up$'; }; then
            break
        fi
        expired && { log "$a: not ok after ${timeout}s"; echo "$info $repl" >&2; exit 1; }
        sleep 0.2
    done
done
for a in $addrs; do
    log "$a $(cli "$a" info replication | tr -d '\r' | grep '^role:')"
done
log "cluster_state:ok on all $# nodes"
