#!/bin/sh
# Stands in for switchboard-node in a SWITCHBOARD_BUILD directory made by run.sh: runs the real
# binary ($SB_VALGRIND_NODE) under valgrind with the same arguments, one log per process in
# $SB_VALGRIND_LOGDIR. exec keeps the pid, so the harness's signals (SIGTERM to drain, SIGSTOP,
# SIGKILL) reach valgrind, which passes them on to the node.
: "${SB_VALGRIND_NODE:?run through tests/valgrind/run.sh}"
: "${SB_VALGRIND_LOGDIR:?run through tests/valgrind/run.sh}"
exec valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
    --errors-for-leak-kinds=definite --error-exitcode=99 --num-callers=30 \
    --log-file="$SB_VALGRIND_LOGDIR/vg-%p.log" "$SB_VALGRIND_NODE" "$@"
