#!/usr/bin/env bash
# Installs every Debian package that building, running and testing Switchboard need.
# Idempotent: packages already present are skipped; apt-get update runs at most once,
# and only when something is missing. Needs root (or sudo) on Debian 12.
set -euo pipefail

# Build and run.
pkgs=(build-essential cmake pkg-config libwebsockets-dev libwebsockets-evlib-uv
      libhiredis-dev libjansson-dev libuv1-dev libjwt-dev libssl-dev redis-server redis-tools)
# Tests: unit, integration, browser, load balancer.
if [ "${SWITCHBOARD_DEPS:-all}" = all ]; then
    pkgs+=(libcmocka-dev python3-pytest python3-websockets python3-redis python3-yaml
           haproxy nginx chromium iproute2 util-linux curl openssl clang libclang-rt-14-dev
           valgrind)
fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

# Node.js and npm may come from another repository (a fresh machine has them); install
# Debian's only when no node is on PATH, since the two conflict.
if [ "${SWITCHBOARD_DEPS:-all}" = all ] && ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -q
    $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
fi

# playwright-core drives Debian's chromium in the browser tests (no browser download).
if [ "${SWITCHBOARD_DEPS:-all}" = all ]; then
    here=$(cd "$(dirname "$0")/.." && pwd)
    if [ -f "$here/tests/browser/package.json" ] && [ ! -d "$here/tests/browser/node_modules/playwright-core" ]; then
        (cd "$here/tests/browser" && npm ci --no-audit --no-fund --silent)
    fi
    # make bench, sections 8 and 9: the load client (ws, socket.io-client) and the servers it is
    # compared with (peer 1.0.2, socket.io 4.8 + @socket.io/redis-adapter, redis), pinned in
    # tests/bench/js/package-lock.json; installed here, never at bench time.
    if [ -f "$here/tests/bench/js/package.json" ] && [ ! -d "$here/tests/bench/js/node_modules/peer" ]; then
        (cd "$here/tests/bench/js" && npm ci --no-audit --no-fund --silent)
    fi
fi
