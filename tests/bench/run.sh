#!/usr/bin/env bash
# make bench: builds Switchboard and the benchmark tools (Release) and runs every section (issue
# 8; 8-10: beside peerjs-server and Socket.IO, big rooms, queue budget: tests/bench/compare_section.py,
# whose Node.js side is in tests/bench/js, installed by deploy/install-deps.sh), writing
# docs/benchmarks.md. About 20 minutes at the default sizes; every size is an
# environment variable (see tests/bench/bench.py, ENV), e.g.
#   SB_BENCH_CONNS=4000 SB_BENCH_SECONDS=5 SB_BENCH_RECON_LINKS=100000 bash tests/bench/run.sh
#   SB_BENCH_SECTIONS="2 3" bash tests/bench/run.sh   (sections: 1-5, 7 cluster, 8 peerjs/Socket.IO, 9 big rooms, 10 queue budget, 11 resume, 12 PeerJS clients)
# Only loopback addresses are used; every process it starts is stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${SB_BENCH_BUILD:-$PWD/build-bench}
export SB_BENCH_BUILD=$build
for tool in redis-server redis-benchmark cmake gcc node; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (make deps)" >&2; exit 1; }
done
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSB_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target switchboard-node switchboard-admin >/dev/null ||
    cmake --build "$build" -j"$(nproc)" --target switchboard-node >/dev/null
cmake -S tests/bench -B "$build/bench" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build/bench" -j"$(nproc)" >/dev/null
# Nodes and clients hold thousands of sockets: lift the soft limit of open files to the hard one.
ulimit -n "$(ulimit -Hn)"
exec /usr/bin/python3 tests/bench/bench.py "$@"
