#!/usr/bin/env bash
# A full host file system: held faults, PCOW_IO_ERROR, nothing lost once
# space returns; nospace=fail dies cleanly.  See test-guest-nospace.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-nospace.py" "$@"
