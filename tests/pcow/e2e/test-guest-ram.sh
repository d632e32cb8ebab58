#!/usr/bin/env bash
# Guest RAM on pcow images (-machine memory-backend=, -numa memdev=): thin
# RAM that holds the guest's pages, prealloc, NUMA, no huge pages, and the
# options that make no sense refused.  See test-guest-ram.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-ram.py" "$@"
