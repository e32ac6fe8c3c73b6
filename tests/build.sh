#!/usr/bin/env bash
# Configures and builds one build directory: tests/build.sh DIR [asan]
# -Werror whenever CI is set (CI=true in CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DSB_TESTS=ON)
[ "${2:-}" = asan ] && flags+=(-DSB_SANITIZE=ON)
[ -n "${CI:-}" ] && flags+=(-DSB_WERROR=ON)
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
