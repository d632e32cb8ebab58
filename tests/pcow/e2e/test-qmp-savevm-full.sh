#!/usr/bin/env bash
# savevm with one pcow image on a full disk fails naming it and leaves no
# snapshot anywhere (all or nothing).  See test-qmp-savevm-full.py.
# Env: QEMU, PCOW_IMG, QEMU_IMG.  Exit 0 pass, 77 skip (last line says
# why), 1 fail.
exec python3 "$(dirname "$0")/test-qmp-savevm-full.py" "$@"
