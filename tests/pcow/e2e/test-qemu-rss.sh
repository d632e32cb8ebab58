#!/usr/bin/env bash
# QEMU's RSS at open of a 4 TiB pcow NVDIMM: no dirty bitmap made resident
# (the code bitmap under TCG), against raw's three.  See test-qemu-rss.py.
# Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
exec python3 "$(dirname "$0")/test-qemu-rss.py" "$@"
