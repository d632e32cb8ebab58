#!/usr/bin/env bash
# Image Monitor benchmark: `make bench-monitor` runs this.  Builds
# bench-monitor and runs it on tmpfs (/dev/shm) and on the build file system
# side by side; the last line of the output is one JSON object.
# Usage: bench-monitor.sh [DIR...]
set -eu
top=$(cd "$(dirname "$0")/../../.." && pwd)
build=${BUILD:-build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
ninja -C "$build" tests/pcow/monitor/bench-monitor >/dev/null
if [ $# -eq 0 ]; then
    work=$(mktemp -d "$build/bench-monitor.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    set -- /dev/shm "$work"
fi
exec "$build/tests/pcow/monitor/bench-monitor" "$@"
