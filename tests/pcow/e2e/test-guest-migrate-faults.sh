#!/usr/bin/env bash
# Migration faults with a pcow NVDIMM under TCG: cancel, destination killed,
# destination image of the wrong size or format.  The source keeps running
# on an intact image.  See test-guest-migrate-faults.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-migrate-faults.py" "$@"
