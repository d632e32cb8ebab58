#!/usr/bin/env bash
# Every page a TCG guest writes during a live migration (RAM and a pcow
# NVDIMM) reaches the destination, compared page by page: the regression
# test of patches/0017.  See test-guest-migrate-ram.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-migrate-ram.py" "$@"
