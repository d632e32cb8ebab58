#!/usr/bin/env bash
# Three pcow NVDIMMs in one VM, one readonly=on (unarmed): each device its
# own image, the readonly image unchanged.  See test-guest-multi.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-multi.py" "$@"
