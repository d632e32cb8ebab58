#!/usr/bin/env bash
# savevm/loadvm/delvm of a guest whose only storage is a pcow NVDIMM (no
# disk): the VM state goes into the pcow image with the snapshot.  See
# test-guest-savevm-pmonly.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-savevm-pmonly.py" "$@"
