#!/usr/bin/env bash
# An image truncated behind QEMU's back: query-pcow, info pcow and the
# snapshot commands answer a one-line error naming the image once; QEMU
# and its VM run on.  See test-qmp-truncated.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-qmp-truncated.py" "$@"
