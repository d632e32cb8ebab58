#!/usr/bin/env bash
# Clones of a VM snapshot against raw restores and cold boots: `make
# bench-clones` runs this (bench-clones.py; docs/benchmarks.rst,
# "Clones").  TCG guests with RAM on pcow: start time of 1, 4 and 16
# clones started at once, start time against RAM size (256 MiB to
# 4 GiB), summed PSS of 8 clones, COW copies.  8 to 12 minutes with 3
# rounds on a 2-vCPU host; --quick is a smoke run of a few minutes.
#
# Usage: bench-clones.sh [--out FILE] [--publish] [--tag T] [--dir DIR]
#                        [--rounds N] [--quick] [--note TEXT] [MORE...]
#   --out FILE  the results file (default $BUILD/bench/clones-<time>.json)
#   --publish   also copy a valid run's file to
#               docs/figures/results-<date>-clones[-T].json
#   --dir DIR   where the images and state files go (default $BUILD/bench)
#   MORE        bench-clones.py's options (--counts, --scale-mib, --mem-n,
#               --cases, --warm-mib, ...)
# Needs root (the guest), QEMU (default $BUILD/qemu-system-x86_64) with
# clone support (-loadvm on a clone) and PCOW_IMG.
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.
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
        --) shift; break ;;
        *) pass+=("$1"); shift ;;
    esac
done
for x in "$qemu" "$pcow_img"; do
    [ -x "$x" ] || { echo "bench-clones.sh: $x is missing" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-clones.sh: needs root (the guest)" >&2
                        exit 1; }
mkdir -p "${dir:=$build/bench}"
work=$(mktemp -d "$dir/clones.XXXXXX")
trap 'rm -rf "$work"' EXIT
: "${out:=$build/bench/clones-$(date -u +%Y%m%d-%H%M%S).json}"
# Debian's python3 (guest.py needs >= 3.10)
PCOW_IMG=$pcow_img /usr/bin/python3 "$here/bench-clones.py" \
    --qemu "$qemu" --pcow-img "$pcow_img" \
    --dir "$work" --out "$out" ${publish:+--publish "$publish"} \
    "${pass[@]}" "$@"
