#!/usr/bin/env bash
# Live migration to a file and back with a pcow NVDIMM under TCG: blocks
# written before and during the migration reach a fresh destination image.
# See test-guest-migrate.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-migrate.py" "$@"
