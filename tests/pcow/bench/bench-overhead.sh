#!/usr/bin/env bash
# QEMU's memory overhead against NVDIMM size: `make bench-overhead` runs
# this.  For each size it starts QEMU paused (TCG, or KVM with --accel) with
# one NVDIMM on a thin pcow image and on a sparse raw file, and records
# RSS/PSS once QMP answers (bench-overhead.py; docs/pcow.rst, `Memory
# overhead of huge NVDIMMs`).  Takes seconds and little disk: the images
# are thin.
#
# Usage: bench-overhead.sh [--out FILE] [--publish] [--dir DIR]
#                          [--accel tcg|kvm|tcg,kvm] [--tag T] [SIZE_GIB...]
#   --out FILE  the results file (default $BUILD/bench/overhead-<time>.json)
#   --publish   also copy it to docs/figures/results-<date>-nvdimm-overhead.json
#   --dir DIR   where the images go (default: a directory in /dev/shm; ext4
#               cannot hold a 16 TiB raw file)
#   --accel A   accelerators, comma separated (default tcg)
#   --tag T     publish as results-<date>-nvdimm-overhead-T.json
# Needs QEMU (default $BUILD/qemu-system-x86_64) and PCOW_IMG.
set -eu -o pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
build=${BUILD:-build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
qemu=${QEMU:-$build/qemu-system-x86_64}
pcow_img=${PCOW_IMG:-$build/pcow-img}
out= publish= dir= pass=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --publish) publish=$top/docs/figures; shift ;;
        --dir) dir=$2; shift 2 ;;
        --accel|--tag) pass+=("$1" "$2"); shift 2 ;;
        --) shift; break ;;
        -*) echo "bench-overhead.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
for x in "$qemu" "$pcow_img"; do
    [ -x "$x" ] || { echo "bench-overhead.sh: $x is missing" >&2; exit 1; }
done
work=$(mktemp -d "${dir:-/dev/shm}/bench-overhead.XXXXXX")
trap 'rm -rf "$work"' EXIT
: "${out:=$build/bench/overhead-$(date -u +%Y%m%d-%H%M%S).json}"
exec /usr/bin/python3 "$here/bench-overhead.py" --qemu "$qemu" \
    --pcow-img "$pcow_img" --dir "$work" --out "$out" \
    ${publish:+--publish "$publish"} "${pass[@]}" "$@"
