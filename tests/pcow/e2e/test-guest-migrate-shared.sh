#!/usr/bin/env bash
# Shared storage and save/restore with a pcow NVDIMM under TCG: the image
# is handed over at switchover, never sent; a changed image is refused.
# See test-guest-migrate-shared.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-migrate-shared.py" "$@"
