#!/usr/bin/env bash
# One base image, two overlays (pcow-img create -b base.pcow -F pcow) booted
# one after the other and together: each sees base + own writes, the base is
# byte-identical.  See test-guest-overlay.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-overlay.py" "$@"
