#!/usr/bin/env bash
# ext4 -o dax (fsdax namespace) on a pcow NVDIMM: files written, verified
# after a reboot.  See test-guest-ext4.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-ext4.py" "$@"
