#!/usr/bin/env bash
# The guest as a PM host: pcow-img create/info inside a guest on its DAX
# file system (namespace via libndctl, persistence path).  See
# test-guest-pmhost.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-pmhost.py" "$@"
