#!/usr/bin/env bash
# QMP/HMP against careless administrators: snapshot name rules and escapes,
# id/name lookup, no pause on a refused command, no snapshot during a
# migration, a second backend on an image names the first.  No guest boots.
# See test-qmp-admin.py.
# Env: QEMU, PCOW_IMG, BUILD.  Exit 0 pass, 1 fail.
exec python3 "$(dirname "$0")/test-qmp-admin.py" "$@"
