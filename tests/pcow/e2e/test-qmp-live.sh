#!/usr/bin/env bash
# QMP/HMP live management against a running TCG guest: live snapshot while
# the guest writes, offline revert, live delete frees space, statistics,
# info pcow, pcow-img refusals, pause of a 1 GiB image.  See
# test-qmp-live.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-qmp-live.py" "$@"
