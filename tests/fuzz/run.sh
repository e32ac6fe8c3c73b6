#!/bin/sh
# Builds the libFuzzer targets with clang and runs each for a while; exits non-zero when any
# target finds a crash, a leak, a timeout or a failed check.
#   tests/fuzz/run.sh [seconds-per-target]     (default 30)
# The build goes to build-fuzz/ under the repository root, or $SB_FUZZ_BUILD. Each target's
# seeds are tests/fuzz/corpus/<target>/ (read only); what the fuzzer learns goes to
# <build>/corpus/<target>/ and what it finds to <build>/artifacts/.
set -eu

secs=${1:-30}
case $secs in
'' | *[!0-9]*) echo "usage: $0 [seconds-per-target]" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${SB_FUZZ_BUILD:-$root/build-fuzz}
targets="fuzz_proto fuzz_config fuzz_redis_url fuzz_auth fuzz_ratelimit fuzz_peerjs fuzz_wire"

command -v clang >/dev/null || { echo "run.sh: clang is required" >&2; exit 2; }
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DSB_FUZZ=ON -DSB_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build/configure.log" 2>&1 || {
    cat "$build/configure.log" >&2
    exit 1
}
cmake --build "$build" -j"$(nproc)" --target fuzz-targets

mkdir -p "$build/artifacts"
failed=""
for t in $targets; do
    mkdir -p "$build/corpus/$t"
    dict=""
    [ -f "$here/$t.dict" ] && dict="-dict=$here/$t.dict"
    echo "== $t: ${secs}s"
    # The first corpus directory receives new inputs; the seeds stay untouched.
    if "$build/tests/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -max_len=16384 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" $dict \
        "$build/corpus/$t" "$here/corpus/$t" >"$build/$t.log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$build/$t.log" | tail -2
    else
        echo "!! $t failed; log: $build/$t.log" >&2
        grep -E 'ERROR|fuzz check failed|SUMMARY|Test unit written' "$build/$t.log" | head -20 >&2
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzzing found problems in:$failed" >&2
    exit 1
fi
echo "fuzzing: all targets clean"
