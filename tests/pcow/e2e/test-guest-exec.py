#!/usr/bin/env python3
"""Code run from a pcow NVDIMM and modified between runs (TCG).

A pcow NVDIMM starts clean for the VGA and migration dirty clients (issue
16 item 10, patches/0013-physmem-let-a-RAM-block-start-clean.patch), so a
guest write to one of its pages goes through TCG's not-dirty path, which
also invalidates translated code on the page.  This test runs guest code
from the NVDIMM itself and rewrites it: tests/pcow/guest/smc.c, built
static here, maps a file of an ext4 -o dax file system on the NVDIMM with
MAP_SYNC (refused unless the mapping is DAX), then 1000 times stores
"mov $N, %eax; ret" into it and calls it; a stale translation would
return an older N.
Boot (empty 256 MiB image): the fsdax recipe, smc, SMC-OK.
Host: the image is clean and holds the last round's instruction bytes at a
4 KiB-aligned offset (the code was the NVDIMM's memory).
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import importlib.util
import os
import subprocess
import sys

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)

ROUNDS = 1000

SCRIPT = common.GUEST_PRELUDE + f"""
ndctl create-namespace -f -e namespace0.0 -m fsdax >/dev/null || fail ndctl
mkfs.ext4 -q -F -b 4096 /dev/pmem0 || fail mkfs
mount -o dax /dev/pmem0 /mnt || fail mount
grep ' /mnt ' /proc/mounts | grep -q dax || fail "/mnt is not dax"
/data/smc /mnt/code {ROUNDS} || fail smc
umount /mnt || fail umount
"""


def main():
    t = common.Test("guest-exec")
    smc = t.tmp / "smc"
    src = common.REPO / "tests" / "pcow" / "guest" / "smc.c"
    r = subprocess.run(["cc", "-static", "-O2", "-Wall", "-o", str(smc),
                        str(src)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        t.fatal(f"cc -static {src}: {r.stdout.strip()}")
    img = t.tmp / "pm.pcow"
    t.img("create", img, "256M")
    r = t.boot("smc", SCRIPT, [img], files={"data/smc": smc})
    out = r.output()
    t.check(f"SMC-OK {ROUNDS}" in out,
            f"guest: code run from the DAX-mapped NVDIMM returned what was "
            f"last stored into it, {ROUNDS} rounds")
    t.check_clean(img, "after the boot")
    raw = t.to_raw(img)
    insn = b"\xb8" + (0x1000 + ROUNDS).to_bytes(4, "little") + b"\xc3"
    data = raw.read_bytes()
    at = data.find(insn)
    while at >= 0 and at % 4096:
        at = data.find(insn, at + 1)
    t.check(at >= 0, "image: the last round's code (mov $%#x, %%eax; ret) "
            "at a page boundary (offset %d)" % (0x1000 + ROUNDS, at))
    raw.unlink()
    t.finish()


if __name__ == "__main__":
    main()
