#!/usr/bin/env bash
# pcow NVDIMM as a block device: size, scattered writes, reboot, thin growth,
# whole-device read allocates nothing.  See test-guest-pmem.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-pmem.py" "$@"
