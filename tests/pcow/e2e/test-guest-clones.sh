#!/usr/bin/env bash
# VMs started from clones of a template's snapshot with -loadvm, without
# booting: four at once, each with its own writes; SIGKILL of one; loadvm,
# delvm and savevm of the origin on a clone.  See test-guest-clones.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-guest-clones.py" "$@"
