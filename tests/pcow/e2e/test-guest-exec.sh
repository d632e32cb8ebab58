#!/usr/bin/env bash
# Self-modifying code run from a DAX mapping on a pcow NVDIMM under TCG.
# See test-guest-exec.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-exec.py" "$@"
