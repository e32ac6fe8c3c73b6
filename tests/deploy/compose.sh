#!/usr/bin/env bash
# docker-compose.yml brought up by a real container engine, and tested through its published
# ports. Debian's docker.io (dockerd 20.10) and docker-compose 1.29, with a daemon of our own:
#
#   tests/deploy/compose.sh setup    install the engine, compose and mmdebstrap (idempotent)
#   tests/deploy/compose.sh images   debian:12, redis:7, haproxy:2.6 (pulled, or built offline:
#                                    see below) and switchboard-node/admin from deploy/Dockerfile
#   tests/deploy/compose.sh up       the stack, inside network namespace $SB_COMPOSE_NETNS
#   tests/deploy/compose.sh test     tests/deploy/compose_stack.py against it (ends with down)
#   tests/deploy/compose.sh up-cluster    the Redis Cluster variant (+ docker-compose.cluster.yml)
#   tests/deploy/compose.sh test-cluster  tests/deploy/compose_cluster_stack.py (ends with down)
#   tests/deploy/compose.sh down     compose down, stop our dockerd, delete the namespace
#   tests/deploy/compose.sh all      all of the above in order, down even after a failure
#                                    (SB_COMPOSE_VARIANTS="single cluster" by default)
#
# Isolation: our dockerd has its own --data-root (the image cache, kept between runs),
# --exec-root, socket, pid file and config, so it neither uses nor disturbs another engine on
# the machine. Containers run only under a dockerd started inside a network namespace this
# script creates: every bridge, NAT rule, container address and published port lives there,
# none in the host's namespace; the tests run inside it and reach the published ports on its
# loopback. Building needs the Debian mirror, so images are built by the same dockerd started
# briefly in the host namespace with no bridge and no iptables rules (`--bridge=none
# --iptables=false`), every build step on the host network, like apt-get on the host.
#
# Images that cannot be pulled (no registry here) are made: debian:12 by mmdebstrap from the
# mirror in this machine's apt sources, then stand-ins for redis:7 and haproxy:2.6 from
# deploy/images/. Where a pull works, nothing is built but our own two images.
#
# Cost on 2 cores (measured; printed at the end): cold, empty cache, about 95 s with a fast
# mirror (the build downloads about 130 MB of Debian packages); warm about 55 s. The Redis
# Cluster variant (docker-compose.cluster.yml, same engine and images) adds about 40 s.
# Everything started is stopped by pid; nothing is left but the image cache in $SB_COMPOSE_DATA.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
NS=${SB_COMPOSE_NETNS:-sbcompose}
DATA=${SB_COMPOSE_DATA:-/var/lib/switchboard-compose}
# Short: unix socket paths (containerd's under the exec root) are limited to 108 bytes.
RUN=${SB_COMPOSE_RUN:-/run/sbcompose}
PROJECT=${SB_COMPOSE_PROJECT:-sbtest}
PULL_TIMEOUT=${SB_COMPOSE_PULL_TIMEOUT:-20}
# The source tree our images are built from (default: this checkout, as `docker compose
# build` would; e.g. a `git archive` export to test a commit while the tree is being edited).
SRC=${SB_COMPOSE_SRC:-$ROOT}
SOCK=$RUN/docker.sock
PIDFILE=$RUN/dockerd.pid
# The engine this script installs, by absolute path: another `docker` on PATH (a newer static
# CLI, say) may not be there on a fresh machine.
DOCKERD=/usr/sbin/dockerd
DOCKER=/usr/bin/docker
COMPOSE=/usr/bin/docker-compose
PY=/usr/bin/python3
# Containers may not be granted more open files than the engine itself holds (here 20000):
# the nodes ask for SB_NOFILE, everything else gets the daemon's default.
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
NOFILE=$((hard < 1048576 ? hard : 1048576))

log() { printf 'compose.sh: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
docker() { DOCKER_HOST=unix://$SOCK "$DOCKER" "$@"; }
# The compose files of a variant: single (docker-compose.yml, what `docker compose up` runs) or
# cluster (with the docker-compose.cluster.yml override: 3 Redis primaries + 3 replicas).
variant_files() {
    case "$1" in
    single) echo "docker-compose.yml" ;;
    cluster) echo "docker-compose.yml:docker-compose.cluster.yml" ;;
    *) die "unknown variant $1" ;;
    esac
}
# compose FILES ARGS...: FILES colon-separated, as COMPOSE_FILE takes them.
compose() {
    local files=() f args=()
    IFS=: read -r -a files <<< "$1"
    shift
    for f in "${files[@]}"; do args+=(-f "$ROOT/$f"); done
    DOCKER_HOST=unix://$SOCK COMPOSE_PROJECT_NAME=$PROJECT SB_NOFILE=$NOFILE \
        SWITCHBOARD_ADMIN_TOKEN=$(cat "$RUN/admin.token") \
        "$COMPOSE" --env-file "$RUN/compose.env" "${args[@]}" "$@"
}
need_root() { [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, dockerd)"; }

# ---- setup --------------------------------------------------------------------------------

cmd_setup() {
    # podman-compose only for its command line (test 00 checks how it passes health checks).
    local pkgs=(docker.io docker-compose podman-compose mmdebstrap iptables iproute2 util-linux curl
                python3-pytest python3-websockets python3-redis) missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -q \
            --no-install-recommends "${missing[@]}"
    fi
    for p in "$DOCKERD" "$DOCKER" "$COMPOSE" /usr/bin/mmdebstrap; do
        [ -x "$p" ] || die "$p missing after setup"
    done
}

# ---- our dockerd --------------------------------------------------------------------------

# start_engine host|netns: our dockerd, in the host namespace without any network of its own
# (for builds) or inside $NS (to run the stack). One at a time: they share the data root.
start_engine() {
    need_root
    stop_engine
    mkdir -p "$RUN" "$DATA"
    echo '{}' > "$RUN/daemon.json"
    local args=(--data-root "$DATA" --exec-root "$RUN/exec" -H "unix://$SOCK"
                --pidfile "$PIDFILE" --config-file "$RUN/daemon.json"
                --default-ulimit "nofile=$NOFILE:$NOFILE" --ip6tables=false
                --log-driver json-file --log-opt max-size=10m)
    # dockerd finds containerd, runc and docker-proxy on PATH: Debian's, not /usr/local's.
    # It does not inherit fd 9 (the run lock): its containers' shims would hold the lock.
    local path=/usr/sbin:/usr/bin:/sbin:/bin
    if [ "$1" = host ]; then
        args+=(--bridge=none --iptables=false --ip-masq=false)
        env PATH=$path setsid "$DOCKERD" "${args[@]}" \
            > "$RUN/dockerd-host.log" 2>&1 < /dev/null 9>&- &
    else
        # nsenter, not `ip netns exec`: that also remounts /sys for the namespace, which
        # hides the cgroup hierarchies under /sys/fs/cgroup from dockerd.
        env PATH=$path setsid nsenter --net="/run/netns/$NS" "$DOCKERD" "${args[@]}" \
            > "$RUN/dockerd-netns.log" 2>&1 < /dev/null 9>&- &
    fi
    echo $! > "$RUN/dockerd.launch"
    for _ in $(seq 1 300); do
        if docker version > /dev/null 2>&1; then
            log "dockerd ($1) up, pid $(cat "$PIDFILE")"
            return 0
        fi
        kill -0 "$(cat "$RUN/dockerd.launch")" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 30 "$RUN/dockerd-$1.log" >&2 || true
    die "dockerd ($1) did not start"
}

# Stops the dockerd this script started (by the pid it recorded, only while that pid is still
# a dockerd), waiting for it and its containerd to exit.
stop_engine() {
    local pid
    for f in "$PIDFILE" "$RUN/dockerd.launch"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
            kill -TERM "$pid"
            for _ in $(seq 1 150); do
                [ -d "/proc/$pid" ] || break
                sleep 0.2
            done
            if [ -d "/proc/$pid" ]; then
                log "dockerd $pid ignored SIGTERM for 30 s: SIGKILL"
                kill -KILL "$pid"
            fi
        fi
        rm -f "$f"
    done
    # dockerd's own containerd exits with it; wait for that too (by its recorded pid).
    local cpid=$RUN/exec/containerd/containerd.pid
    if [ -f "$cpid" ]; then
        pid=$(cat "$cpid")
        for _ in $(seq 1 50); do
            [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = containerd ] || break
            sleep 0.2
        done
    fi
    # dockerd bind-mounts its data root onto itself and undoes it on a clean exit; one that was
    # killed leaves that (and its layers' mounts) behind: ours only, deepest first.
    local m
    local mounts
    mounts=$(findmnt -rn -o TARGET | grep -E "^($DATA|$RUN)(/|$)" | sort -r || true)
    for m in $mounts; do
        umount "$m" || log "cannot unmount $m"
    done
}

# ---- images -------------------------------------------------------------------------------

have_image() { docker image inspect "$1" > /dev/null 2>&1; }

try_pull() {
    [ "${SB_COMPOSE_PULL:-1}" = 1 ] || return 1
    log "pulling $1 (at most ${PULL_TIMEOUT}s)"
    timeout "$PULL_TIMEOUT" "$DOCKER" -H "unix://$SOCK" pull -q "$1" > /dev/null 2>&1
}

# The mirror lines of this machine's Debian archives, from apt's own view of its sources
# (works for sources.list and deb822 .sources alike): "deb URI SUITE main" per Debian suite.
debian_sources() {
    apt-cache policy | awk '
        /^ *[0-9]+ [a-z]+:\/\// { uri = $2; split($3, sc, "/"); suite = sc[1]; comp = sc[2]; next }
        /^ +release / && uri != "" {
            if ($0 ~ /o=Debian,/ && comp == "main") print "deb " uri " " suite " main"
            uri = ""
        }' | sort -u
}

base_image() {
    if have_image debian:12; then return 0; fi
    if try_pull debian:12; then
        try_pull debian:12-slim || docker tag debian:12 debian:12-slim
        return 0
    fi
    local tarball=$DATA/debian12-minbase sources
    mapfile -t sources < <(debian_sources)
    [ ${#sources[@]} -gt 0 ] || die "no Debian mirror found in apt's sources"
    log "building debian:12 with mmdebstrap from: ${sources[*]}"
    # Valid-Until off: a snapshot mirror's Release files have expired dates.
    mmdebstrap --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
        bookworm "$tarball.part.tar" "${sources[@]}" > "$RUN/mmdebstrap.log" 2>&1 \
        || { tail -n 20 "$RUN/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    docker import -c 'CMD ["bash"]' "$tarball.part.tar" debian:12 > /dev/null
    rm -f "$tarball.part.tar"
}

# stand_in TAG DIR: TAG pulled, or built from deploy/images/DIR. A stand-in built from an
# older DIR (its label records a hash of DIR) is rebuilt.
stand_in() {
    local tag=$1 dir=$ROOT/deploy/images/$2 sum label
    sum=$(cd "$dir" && cat ./* | sha256sum | cut -c1-16)
    if have_image "$tag"; then
        label=$(docker image inspect -f '{{index .Config.Labels "org.switchboard.stand-in"}}' "$tag")
        [ -z "$label" ] || [ "$label" = "$sum" ] && return 0
    elif try_pull "$tag"; then
        return 0
    fi
    log "building the stand-in $tag from deploy/images/$2"
    DOCKER_BUILDKIT=0 docker build -q --force-rm --network host --label "org.switchboard.stand-in=$sum" \
        -t "$tag" "$dir" > /dev/null
}

# Containers left in the data root by a run that was killed before its down: a dockerd in the
# host namespace would start them again (restart policy) and create their bridge there. Remove
# them with the engine inside the namespace first.
clear_leftovers() {
    compgen -G "$DATA/containers/*" > /dev/null || return 0
    log "removing containers a killed run left behind"
    [ -e "/run/netns/$NS" ] || ip netns add "$NS"
    start_engine netns
    local ids
    mapfile -t ids < <(docker ps -aq)
    [ ${#ids[@]} -eq 0 ] || docker rm -f "${ids[@]}" > /dev/null
    docker network prune -f > /dev/null
    stop_engine
}

cmd_images() {
    local t0=$SECONDS prev
    prev=$(trap -p EXIT)
    clear_leftovers
    start_engine host
    trap stop_engine EXIT
    base_image
    have_image debian:12-slim || docker tag debian:12 debian:12-slim
    stand_in redis:7 redis
    stand_in haproxy:2.6 haproxy
    # Our images from the context BuildKit would send (deploy/Dockerfile.dockerignore), with the
    # legacy builder: no registry needed. The layer cache makes a warm rebuild seconds.
    local target
    for target in node admin; do
        log "building switchboard-$target:latest"
        "$PY" "$ROOT/tests/deploy/build_context.py" "$SRC" "$SRC/deploy/Dockerfile.dockerignore" \
            | DOCKER_BUILDKIT=0 docker build -q --force-rm --network host -f deploy/Dockerfile \
                --target "$target" -t "switchboard-$target:latest" - > /dev/null \
            || die "building switchboard-$target failed"
    done
    # Dangling layers of earlier builds would fill the cache over many runs.
    docker image prune -f > /dev/null
    stop_engine
    eval "${prev:-trap - EXIT}"
    log "images ready in $((SECONDS - t0)) s"
}

# ---- the stack ----------------------------------------------------------------------------

# The engine inside the namespace (stack_up needs it).
engine_up() {
    need_root
    [ -e "/run/netns/$NS" ] || ip netns add "$NS"
    ip -n "$NS" link set lo up
    start_engine netns
    for img in debian:12 redis:7 haproxy:2.6 switchboard-node:latest switchboard-admin:latest; do
        have_image "$img" || die "image $img missing: run $0 images first"
    done
}

# stack_up VARIANT: that variant's stack, from nothing, until every container is healthy (and,
# in the cluster variant, redis-init exited 0).
stack_up() {
    local t0=$SECONDS variant=$1 files want
    files=$(variant_files "$variant")
    want=6
    [ "$variant" = single ] || want=11
    # What compose reads besides the environment: nothing from the user's ./.env.
    : > "$RUN/compose.env"
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/admin.token")
    # A stack left by an interrupted run would be reused by up: start from nothing.
    compose "$(variant_files cluster)" down --remove-orphans --timeout 5 > /dev/null 2>&1 || true
    docker volume ls -q | sort > "$RUN/volumes.before"
    log "compose up: $variant (project $PROJECT, SB_NOFILE=$NOFILE)"
    compose "$files" up -d --no-build \
        || { compose "$files" logs --tail 30 >&2 || true; die "compose up failed"; }
    # up -d waits for the dependencies' health, not for the last service's (the LB): wait here.
    local names=() unhealthy="" init
    for _ in $(seq 1 120); do
        mapfile -t names < <(docker ps -q --filter "label=com.docker.compose.project=$PROJECT")
        if [ ${#names[@]} -gt 0 ]; then
            unhealthy=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' \
                "${names[@]}" | grep -v ' healthy$' || true)
        fi
        if [ -z "$unhealthy" ] && [ ${#names[@]} -eq "$want" ]; then
            if [ "$variant" = cluster ]; then
                init=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
                    --filter label=com.docker.compose.service=redis-init)
                [ "$(docker inspect -f '{{.State.ExitCode}}' "$init")" = 0 ] \
                    || { docker logs "$init" >&2; die "redis-init failed"; }
            fi
            log "stack ($variant) healthy in $((SECONDS - t0)) s"
            host_untouched
            return 0
        fi
        sleep 1
    done
    compose "$files" ps >&2 || true
    compose "$files" logs --tail 30 >&2 || true
    die "stack not healthy after 120 s: $unhealthy"
}

cmd_up() {
    engine_up
    stack_up "${1:-single}"
}

# The stack's network lives in $NS only: the host's namespace has no bridge or veth of
# docker's, no DOCKER iptables chain, no route to a container network.
host_untouched() {
    local bad
    bad=$(ip -o link show | awk -F': ' '{print $2}' | grep -E '^(docker0|br-[0-9a-f]{12}|veth[0-9a-f]{7})(@|$)' || true)
    [ -z "$bad" ] || die "docker interfaces in the host namespace: $bad"
    # grep -c reads everything: with pipefail, grep -q's early exit could fail the pipe.
    if [ "$(iptables-save 2>/dev/null | grep -c DOCKER)" -gt 0 ]; then
        die "DOCKER iptables rules in the host namespace"
    fi
    local net nets
    mapfile -t nets < <(docker network ls -q)
    for net in $(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' \
            "${nets[@]}"); do
        if [ "$(ip route show match "$net" | grep -vc '^default')" -gt 0 ]; then
            die "the host namespace routes to the container network $net"
        fi
    done
    [ "$(nsenter --net="/run/netns/$NS" ip -o link show | grep -c ': br-')" -gt 0 ] \
        || die "no compose bridge inside $NS: is dockerd really there?"
    log "host namespace untouched: no docker interface, rule or route; the bridge is in $NS"
}

cmd_test() {
    local variant=${1:-single} suite=compose_stack.py junit=${SB_COMPOSE_JUNIT:-}
    need_root
    [ -S "$SOCK" ] || die "no stack: run $0 up first"
    if [ "$variant" = cluster ]; then
        suite=compose_cluster_stack.py
        [ -z "$junit" ] || junit=${junit%.xml}-cluster.xml
    fi
    # The test client runs inside the namespace: the published ports are on its loopback.
    nsenter --net="/run/netns/$NS" env DOCKER_HOST="unix://$SOCK" SB_DOCKER="$DOCKER" \
        SB_COMPOSE="$COMPOSE" SB_COMPOSE_ENV_FILE="$RUN/compose.env" \
        SB_COMPOSE_FILES="$(variant_files "$variant")" \
        COMPOSE_PROJECT_NAME="$PROJECT" SB_NOFILE="$NOFILE" \
        SWITCHBOARD_ADMIN_TOKEN="$(cat "$RUN/admin.token")" \
        SB_COMPOSE_VOLUMES_BEFORE="$RUN/volumes.before" \
        "$PY" -m pytest -q -s -p no:cacheprovider "$ROOT/tests/deploy/$suite" \
        ${junit:+--junitxml="$junit"}
}

cmd_down() {
    need_root
    if [ -S "$SOCK" ] && docker version > /dev/null 2>&1; then
        [ -f "$RUN/admin.token" ] || echo x > "$RUN/admin.token"
        [ -f "$RUN/compose.env" ] || : > "$RUN/compose.env"
        # The cluster files name every service either variant has.
        compose "$(variant_files cluster)" down --remove-orphans --timeout 20 > /dev/null 2>&1 \
            || log "compose down failed"
    fi
    stop_engine
    # Whatever was left in the namespace goes with it.
    if [ -e "/run/netns/$NS" ]; then
        local pids
        pids=$(ip netns pids "$NS" || true)
        [ -z "$pids" ] || log "processes left in $NS after stopping dockerd: $pids"
        ip netns del "$NS"
    fi
    rm -f "$RUN/admin.token" "$RUN/compose.env" "$RUN/volumes.before"
}

cmd_all() {
    local t0=$SECONDS cold=no
    need_root
    [ -d "$DATA" ] || cold=yes
    cmd_setup
    trap 'cmd_down' EXIT
    cmd_images
    engine_up
    local variant t
    for variant in ${SB_COMPOSE_VARIANTS:-single cluster}; do
        t=$SECONDS
        stack_up "$variant"
        cmd_test "$variant"
        log "$variant variant: up and tests in $((SECONDS - t)) s"
    done
    trap - EXIT
    cmd_down
    log "compose suite passed in $((SECONDS - t0)) s (cold cache: $cold; measured on 2 cores:" \
        "cold about 95 s plus the download of about 130 MB of Debian packages, warm about 55 s;" \
        "the cluster variant (up, tests, down) adds about 40 s, 75 s on a loaded machine)"
}

main() {
    # Namespaces and dockerd need root: through sudo when there is one (like install-deps.sh).
    if [ "$(id -u)" -ne 0 ] && command -v sudo > /dev/null; then
        exec sudo --preserve-env=SB_COMPOSE_JUNIT,SB_COMPOSE_SRC,SB_COMPOSE_PULL,SB_COMPOSE_VARIANTS \
            bash "$ROOT/tests/deploy/compose.sh" "$@"
    fi
    # One run at a time on a machine: the runs share the data root, the namespace and $RUN.
    if [ "${1:-all}" != setup ]; then
        need_root
        exec 9> /run/sbcompose.lock
        flock -w 1200 9 || die "another compose.sh run holds /run/sbcompose.lock"
    fi
    case "${1:-all}" in
    setup) cmd_setup ;;
    images) cmd_images ;;
    up) cmd_up single ;;
    test) cmd_test single ;;
    up-cluster) cmd_up cluster ;;
    test-cluster) cmd_test cluster ;;
    down) cmd_down ;;
    all) cmd_all ;;
    *) echo "usage: $0 setup|images|up|test|up-cluster|test-cluster|down|all" >&2; exit 2 ;;
    esac
}

# One line, read whole before it runs: editing this file while it runs cannot derail it.
main "$@"; exit $?
