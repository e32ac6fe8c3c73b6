#!/bin/sh
# Entry point of the haproxy:2.6 stand-in, as the official one: a first argument that is an
# option means haproxy; haproxy runs master-worker (-W) in the foreground with logs to
# stdout/stderr (-db).
set -e
case "$1" in
-*) set -- haproxy "$@" ;;
esac
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
