#!/usr/bin/env bash
# An incoming state that never hands the pcow image over (migrate-data=none)
# is not run on: the VM stays stopped, cont is refused naming the image.
# See test-qmp-incoming-nohandover.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-qmp-incoming-nohandover.py" "$@"
