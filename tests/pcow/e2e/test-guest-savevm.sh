#!/usr/bin/env bash
# savevm/loadvm/delvm and the snapshot-save/-load/-delete jobs with a qcow2
# disk and a pcow NVDIMM: the pcow image takes the snapshot, the vmstate
# leaves the NVDIMM out, all or nothing.  See test-guest-savevm.py.
# Env: QEMU, PCOW_IMG, QEMU_IMG.  Exit 0 pass, 77 skip (last line says
# why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-savevm.py" "$@"
