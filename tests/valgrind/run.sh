#!/usr/bin/env bash
# Runs integration scenarios with every node under valgrind (memcheck), then checks each
# node's log: 0 errors and 0 bytes definitely lost. Prints the figures per node process.
#   tests/valgrind/run.sh [pytest node ids...]
# Defaults: a join/signal/leave across two nodes, link cleanup by leave, close and TCP reset,
# signals held for a joiner, script errors, the node's own pings and hang-up, hostile JSON, refused tokens, and a SIGTERM drain with linked sockets. The node is built
# without sanitizers in $SB_VALGRIND_BUILD (default build-valgrind/ under the repository
# root); logs go to $SB_VALGRIND_OUT (default a new temp directory). How: SWITCHBOARD_BUILD
# points at a directory whose node/switchboard-node is node-wrapper.sh, which execs valgrind
# on the real binary. The conftest teardown already fails a test whose node exits non-zero
# (valgrind exits 99 on an error or a definite leak).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${SB_VALGRIND_BUILD:-$root/build-valgrind}
out=${SB_VALGRIND_OUT:-$(mktemp -d /tmp/sb-valgrind.XXXXXX)}
py=/usr/bin/python3

command -v valgrind >/dev/null || { echo "run.sh: valgrind is required" >&2; exit 2; }
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSB_TESTS=OFF \
    -DSB_SANITIZE=OFF >"$out/configure.log" 2>&1 || { cat "$out/configure.log" >&2; exit 1; }
cmake --build "$build" -j"$(nproc)" --target switchboard-node >"$out/build.log" 2>&1 ||
    { tail -50 "$out/build.log" >&2; exit 1; }

wrap=$out/build
mkdir -p "$wrap/node" "$out/logs"
cp "$here/node-wrapper.sh" "$wrap/node/switchboard-node"
chmod +x "$wrap/node/switchboard-node"
export SB_VALGRIND_NODE=$build/node/switchboard-node
export SB_VALGRIND_LOGDIR=$out/logs

if [ $# -eq 0 ]; then
    set -- \
        "tests/integration/test_02_protocol.py::test_01_join_signal_leave_across_nodes" \
        "tests/integration/test_02_protocol.py::test_04_cleanup_notifies_and_removes_links" \
        "tests/integration/test_02_protocol.py::test_12_signal_to_a_joiner_waits_for_its_joined" \
        "tests/integration/test_02_protocol.py::test_13_internal_and_transient_redis_errors" \
        "tests/integration/test_02_protocol.py::test_14_node_pings_idle_sockets_and_pongs_keep_them" \
        "tests/integration/test_05_hostile.py::test_09_hostile_json" \
        "tests/integration/test_06_auth.py::test_02_refused_tokens_write_nothing" \
        "tests/integration/test_07_drain.py::test_02_quick_drain_without_stragglers"
fi
cd "$root"
status=0
SWITCHBOARD_BUILD=$wrap $py -m pytest -q -p no:cacheprovider "$@" || status=1

# One log per node process: "ERROR SUMMARY: N errors" and, unless every block was freed,
# "definitely lost: N bytes".
logs=$(ls "$out"/logs/vg-*.log 2>/dev/null || true)
if [ -z "$logs" ]; then
    echo "valgrind: no logs in $out/logs" >&2
    exit 1
fi
printf '\n%-12s %8s %14s %14s %14s %14s\n' process errors definitely indirectly possibly "in use"
total_def=0
total_err=0
for f in $logs; do
    pid=$(basename "$f" .log)
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9,]*\) errors.*/\1/p' "$f" | tail -1 | tr -d ,)
    get() { sed -n "s/.*$1: *\([0-9,]*\) bytes.*/\1/p" "$f" | tail -1 | tr -d ,; }
    def=$(get "definitely lost"); ind=$(get "indirectly lost"); pos=$(get "possibly lost")
    use=$(get "in use at exit")
    if grep -q "All heap blocks were freed" "$f"; then def=0 ind=0 pos=0 use=0; fi
    if [ -z "$errors" ] || [ -z "$def" ]; then
        echo "$f: no summary (the process did not exit?)" >&2
        status=1
        continue
    fi
    printf '%-12s %8s %14s %14s %14s %14s\n' "$pid" "$errors" "$def" "${ind:-0}" "${pos:-0}" \
        "${use:-0}"
    total_def=$((total_def + def))
    total_err=$((total_err + errors))
done
nprocs=$(echo "$logs" | wc -l)
echo "total: $total_err errors, $total_def bytes definitely lost ($nprocs node processes;" \
    "logs in $out/logs)"
if [ "$total_def" -ne 0 ] || [ "$total_err" -ne 0 ]; then
    status=1
fi
exit $status
