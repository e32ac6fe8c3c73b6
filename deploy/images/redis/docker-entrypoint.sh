#!/bin/sh
# Entry point of the redis:7 stand-in: like the official one, a first argument that is an
# option means redis-server. The official server is built with protected mode off (it is
# reached over the container network); Debian's defaults to on and would refuse the nodes,
# so it is turned off here, before the caller's options (which may turn it on again).
set -e
case "$1" in
-*) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
