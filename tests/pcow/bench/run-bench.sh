#!/usr/bin/env bash
# Guest benchmarks, everything in one run: host-dax, raw-dax, pcow-dax,
# pcow-blk and qcow2-blk side by side, images on tmpfs and on the build file
# system, Redis in the guest, the Image Monitor benchmark; a table of ratios
# and, as the last line, one JSON object.  `make bench` / `make bench-quick`.
#
# Usage: run-bench.sh [--quick] [--accel tcg|kvm] [--publish] [--tag T]
#                     [--out DIR] [--fs tmpfs,build] [--only CONFIGS]
#                     [--runtime S] [--rounds N]
#   --quick    images on tmpfs only, 10 rounds of 1 s jobs, smaller files
#   --rounds   rounds (default 10): medians and 95% bootstrap intervals
#   --publish  a valid run also writes its charts and its results file
#              (results-<date>-<quick|full>[-T].json) into docs/figures/
# A failed configuration (device, mkfs, mount, no DAX) makes the run invalid:
# exit status 1, "valid": false with the reasons in the JSON.
# Env (set by the Makefile): BUILD, QEMU, QEMU_IMG, PCOW_IMG.
# Needs root (NVDIMM images, userfaultfd); installs fio, python3-matplotlib
# and redis-tools with apt-get if they are missing.
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
cd "$top"

need=()
command -v fio >/dev/null || need+=(fio)
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
[ -x /usr/bin/redis-check-rdb ] && [ -x /usr/bin/redis-benchmark ] || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
    echo "run-bench: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${need[@]}" >&2 || echo "run-bench: apt-get failed; carrying on" >&2
fi

# Debian's python3 (guest.py needs >= 3.10; matplotlib comes from Debian)
exec /usr/bin/python3 "$here/bench-guest.py" "$@"
