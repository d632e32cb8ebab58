#!/usr/bin/env bash
# Migration onto an overlay of the same base (migrate-data=top) under TCG:
# only the top image moves; an overlay of another base is refused.
# See test-guest-migrate-top.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-migrate-top.py" "$@"
