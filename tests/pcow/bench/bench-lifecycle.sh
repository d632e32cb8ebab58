#!/usr/bin/env bash
# VM lifecycle with a pcow NVDIMM against a raw one: `make bench-lifecycle`
# runs this.  A TCG guest with a 16 GiB NVDIMM of which 1% is written:
# live migration (to a fresh image, on shared storage, onto an overlay of
# the same base, and raw), savevm/loadvm, save/restore to a file
# (bench-lifecycle.py; docs/benchmarks.rst, "VM lifecycle").  About 15
# minutes with 3 rounds on a 2-vCPU host.
#
# Usage: bench-lifecycle.sh [--out FILE] [--publish] [--tag T] [--dir DIR]
#                           [--rounds N] [--note TEXT] [MORE...]
#   --out FILE  the results file (default $BUILD/bench/lifecycle-<time>.json)
#   --publish   also copy a valid run's file to
#               docs/figures/results-<date>-lifecycle[-T].json
#   --dir DIR   where the images go (default $BUILD/bench; not tmpfs: a
#               raw NVDIMM's holes cost memory there once read)
#   MORE        bench-lifecycle.py's options (--cases, --size-gib, ...)
# Needs root (the guest), QEMU (default $BUILD/qemu-system-x86_64),
# QEMU_IMG and PCOW_IMG; 16 GiB sparse files (about 1 GB of disk).
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.
set -eu -o pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
build=${BUILD:-build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
qemu=${QEMU:-$build/qemu-system-x86_64}
qemu_img=${QEMU_IMG:-$build/qemu-img}
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
for x in "$qemu" "$qemu_img" "$pcow_img"; do
    [ -x "$x" ] || { echo "bench-lifecycle.sh: $x is missing" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-lifecycle.sh: needs root (the guest)" >&2
                        exit 1; }
mkdir -p "${dir:=$build/bench}"
work=$(mktemp -d "$dir/lifecycle.XXXXXX")
trap 'rm -rf "$work"' EXIT
: "${out:=$build/bench/lifecycle-$(date -u +%Y%m%d-%H%M%S).json}"
# Debian's python3 (guest.py needs >= 3.10)
PCOW_IMG=$pcow_img /usr/bin/python3 "$here/bench-lifecycle.py" \
    --qemu "$qemu" --qemu-img "$qemu_img" --pcow-img "$pcow_img" \
    --dir "$work" --out "$out" ${publish:+--publish "$publish"} \
    "${pass[@]}" "$@"
