#!/usr/bin/env bash
# QEMU SIGKILLed / SIGTERMed / told to quit while the guest writes: the image
# checks clean, synced data survives, reboot works.  See test-guest-crash.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-crash.py" "$@"
