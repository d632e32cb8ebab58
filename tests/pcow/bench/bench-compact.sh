#!/usr/bin/env bash
# Compaction benchmark: `make bench-compact` runs this.  Builds
# bench-compact and runs it on the build file system (or DIR): a 64 GiB
# image with 200000 clusters written in random order (as single clusters,
# then as 1 MiB runs), measured before and after `compact`.  The output,
# the machine, the file system, the load average and the git commit go to
# a results file (benchmeta.py run).
#
# Usage: bench-compact.sh [--out FILE] [--publish] [--scale K] [DIR]
#   --out FILE  the results file (default $BUILD/bench/compact-<time>.json)
#   --publish   also copy it to docs/figures/results-<date>-compact.json
#   --scale K   divide the image size and the cluster count by K, for a
#               file system without the room (the run says so)
# Free space is checked first (df): the clusters' blocks, half again for
# the moves, and 1 GiB; without it the script stops and names --scale.
set -eu -o pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
build=${BUILD:-build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
out= publish= scale=1
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --publish) publish=$top/docs/figures; shift ;;
        --scale) scale=$2; shift 2 ;;
        --) shift; break ;;
        -*) echo "bench-compact.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
case "$scale" in
    ''|*[!0-9]*|0) echo "bench-compact.sh: --scale: a positive integer" >&2
                   exit 2 ;;
esac
ninja -C "$build" tests/pcow/bench/bench-compact >/dev/null
work=$(mktemp -d "${1:-$build}/bench-compact.XXXXXX")
trap 'rm -rf "$work"' EXIT
size=$(( (64 << 30) / scale / 65536 * 65536 ))
clusters=$(( 200000 / scale ))
need=$(( clusters * 65536 * 3 / 2 + (1 << 30) ))
avail=$(df --output=avail -B1 "$work" | tail -1)
if [ "$avail" -lt "$need" ]; then
    echo "bench-compact.sh: $work has $((avail >> 20)) MiB free, the run" \
         "needs $((need >> 20)) MiB: use --scale K" >&2
    exit 1
fi
: "${out:=$build/bench/compact-$(date -u +%Y%m%d-%H%M%S).json}"
echo "bench-compact.sh: $work ($(findmnt -n -o SOURCE,FSTYPE -T "$work")," \
     "$((avail >> 30)) GiB free), scale 1/$scale"
cd "$work"
/usr/bin/python3 "$here/benchmeta.py" run --what compact --out "$out" \
    ${publish:+--publish "$publish"} -- \
    "$build/tests/pcow/bench/bench-compact" --size "$size" \
    --clusters "$clusters" "$work"
