#!/usr/bin/env bash
# pcow-img snapshot -c between boots, more writes, snapshot -a: the guest
# sees the snapshot; other snapshots intact.  See test-guest-snapshot.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-snapshot.py" "$@"
