#!/usr/bin/env bash
# Every test, in both builds: unit (ctest), Lua (pytest, real Redis), integration (pytest, real
# Redis and nodes), deploy checks, browser tests (headless Chromium). Ends with one line
# "N passed, N failed" summed over every suite, and exits non-zero when anything failed.
# SB_TEST_QUICK=1 skips the ASan build's integration run (for local iteration only).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$root/tests/artifacts
rm -rf "$out/results"
mkdir -p "$out/results"
py=/usr/bin/python3
status=0
failed_suites=()

step() { printf '\n=== %s ===\n' "$*"; }
run_suite() { # name, command...
    local name=$1
    shift
    step "$name"
    if ! "$@"; then
        status=1
        failed_suites+=("$name")
    fi
}

step "build (normal)"
bash tests/build.sh build || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
step "build (ASan + UBSan)"
bash tests/build.sh build-asan asan || { echo "ASan build failed"; echo "0 passed, 1 failed"; exit 1; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# cmocka writes one JUnit file per test program (so each test case is counted, not each
# program); ctest then runs them once more for its own pass/fail and output on failure.
unit() { # build dir, tag
    local ok=0 t
    for t in "$1"/tests/unit/test_*; do
        [ -x "$t" ] || continue
        CMOCKA_MESSAGE_OUTPUT=xml CMOCKA_XML_FILE="$out/results/unit$2-$(basename "$t").xml" "$t" \
            >/dev/null 2>&1 || ok=1
    done
    ctest --test-dir "$1" --output-on-failure || ok=1
    return $ok
}
run_suite "unit (normal)" unit build ""
run_suite "unit (asan)" unit build-asan "-asan"
run_suite "lua" $py -m pytest -q -p no:cacheprovider tests/lua --junitxml="$out/results/lua.xml"
run_suite "integration (normal)" env SWITCHBOARD_BUILD="$root/build" \
    $py -m pytest -q -p no:cacheprovider tests/integration tests/deploy tests/docs --junitxml="$out/results/integration.xml"
# The protocol, admin and chaos suites once more on a 3-primary, 3-replica Redis Cluster (one
# cluster per module; tests/integration/conftest.py). Measured about 100 s on 2 cores.
run_suite "integration on a Redis Cluster (normal)" env SB_REDIS=cluster SWITCHBOARD_BUILD="$root/build" \
    $py -m pytest -q -p no:cacheprovider tests/integration/test_02_protocol.py \
    tests/integration/test_admin_reconcile.py tests/integration/test_08_chaos.py \
    tests/integration/test_15_resume.py tests/integration/test_16_peerjs.py \
    tests/integration/test_admin_faults.py \
    --junitxml="$out/results/integration-cluster.xml"
# The same node with --websocket lws (libwebsockets for every connection, the layer before the
# node's own; still what serves TLS): the files that pin WebSocket behaviour byte by byte, and
# the caps at the fd limit (lws then accepts every connection itself).
run_suite "integration, --websocket lws (normal)" env SWITCHBOARD_WEBSOCKET=lws \
    SWITCHBOARD_BUILD="$root/build" $py -m pytest -q -p no:cacheprovider \
    tests/integration/test_02_protocol.py tests/integration/test_05_hostile.py \
    tests/integration/test_09_hostile_load.py tests/integration/test_09_http_edge.py \
    tests/integration/test_14_write_path.py \
    tests/integration/test_15_resume.py tests/integration/test_16_peerjs.py \
    --junitxml="$out/results/integration-lws.xml"
if [ -z "${SB_TEST_QUICK:-}" ]; then
    run_suite "integration (asan)" env SWITCHBOARD_BUILD="$root/build-asan" \
        $py -m pytest -q -p no:cacheprovider tests/integration --junitxml="$out/results/integration-asan.xml"
fi
# docker-compose.yml under a real engine (dockerd in a network namespace of its own; images
# cached in /var/lib/switchboard-compose): measured cold about 95 s, warm about 55 s; then its
# Redis Cluster variant (docker-compose.cluster.yml): about 40 s more (75 s on a loaded machine).
run_suite "deploy (compose)" env SB_COMPOSE_JUNIT="$out/results/compose.xml" \
    bash tests/deploy/compose.sh all
for t in tests/browser/run-*.sh; do
    [ -f "$t" ] || continue
    name=$(basename "$t" .sh)
    run_suite "browser $name" bash -c "SWITCHBOARD_BUILD='$root/build' bash '$t' 2>&1 | tee '$out/results/$name.log'; exit \${PIPESTATUS[0]}"
done
if [ -n "${CI:-}" ] && [ -f tests/fuzz/run.sh ]; then
    run_suite "fuzz (30 s per target)" bash tests/fuzz/run.sh "${SB_FUZZ_SECONDS:-30}"
fi

step "summary"
$py tests/summary.py "$out/results"
rc=$?
[ $rc -ne 0 ] && status=1
if [ ${#failed_suites[@]} -gt 0 ]; then
    echo "failed suites: ${failed_suites[*]}"
fi
exit $status
