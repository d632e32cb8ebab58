#!/usr/bin/env bash
# Image Monitor benchmark: `make bench-monitor` runs this.  Builds
# bench-monitor and runs it on tmpfs (/dev/shm) and on the build file system
# side by side.  The last line of the output is one JSON object; it is
# checked (strict JSON, no NaN) and written with the machine, the load
# average, the date and the git commit to a results file.
#
# Usage: bench-monitor.sh [--out FILE] [--publish] [--tag T] [--load]
#                         [--reps N] [DIR...]
#   --out FILE  the results file (default $BUILD/bench/monitor-<time>.json)
#   --publish   also copy it to docs/figures/results-<date>-monitor.json
#               (results-<date>-monitor-load.json with --load)
#   --tag T     publish as results-<date>-monitor[-load]-T.json
#   --load      a busy-loop process on every online CPU during the run
#   --reps N    repetitions of the latency figures (default 5): medians
# Exit status: bench-monitor's, or 1 if its output is not valid.
set -eu -o pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
build=${BUILD:-build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
out= publish= tag= opts=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --publish) publish=$top/docs/figures; shift ;;
        --tag) tag=$2; shift 2 ;;
        --load) opts+=(--load); shift ;;
        --reps) opts+=(--reps "$2"); shift 2 ;;
        --) shift; break ;;
        -*) echo "bench-monitor.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
ninja -C "$build" tests/pcow/bench/bench-monitor >/dev/null
work=$(mktemp -d "$build/bench-monitor.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ $# -eq 0 ]; then
    mkdir "$work/dir"
    set -- /dev/shm "$work/dir"
fi
: "${out:=$build/bench/monitor-$(date -u +%Y%m%d-%H%M%S).json}"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
rc=0
"$build/tests/pcow/bench/bench-monitor" ${opts[@]+"${opts[@]}"} "$@" | tee "$work/stdout" ||
    rc=$?
if [ $rc -ne 0 ]; then
    echo "bench-monitor.sh: bench-monitor failed (exit $rc)" >&2
    exit $rc
fi
/usr/bin/python3 "$here/benchmeta.py" monitor-results \
    --stdout "$work/stdout" --load0 "$load0" --started "$started" \
    --out "$out" ${publish:+--publish "$publish"} ${tag:+--tag "$tag"} "$@"
