#!/usr/bin/env python3
"""ext4 with DAX on a pcow NVDIMM, across a reboot.

Boot 1 (empty 256 MiB image): the fsdax recipe (ndctl create-namespace -m
    fsdax, mkfs.ext4 -b 4096, mount -o dax); /proc/mounts shows dax; files
    of 4 KiB .. 3 MiB (random data) and a small tree are written, their md5
    recorded on the console and in /mnt/SUMS; umount.
Host: image clean, a few MiB allocated (thin: far below 256 MiB).
Boot 2: the namespace is still fsdax; mount -o dax; md5sum -c SUMS passes
    and the md5s equal boot 1's; a file is appended and one deleted; umount;
    e2fsck -fn is clean.
Host: image clean.
"""

import importlib.util
import os

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB = common.MiB

BOOT1 = common.GUEST_PRELUDE + r"""
ndctl create-namespace -f -e namespace0.0 -m fsdax >/dev/null || fail ndctl
ndctl list -N | grep -q '"mode":"fsdax"' && echo MODE-FSDAX
mkfs.ext4 -q -F -b 4096 /dev/pmem0 || fail mkfs
mount -o dax /dev/pmem0 /mnt || fail mount
grep ' /mnt ' /proc/mounts | grep -q dax && echo MOUNT-DAX
mkdir -p /mnt/dir/sub
dd if=/dev/urandom of=/mnt/f4k bs=4096 count=1 2>/dev/null
dd if=/dev/urandom of=/mnt/f100k bs=1000 count=100 2>/dev/null
dd if=/dev/urandom of=/mnt/dir/f1m bs=64k count=16 2>/dev/null
dd if=/dev/urandom of=/mnt/dir/sub/f3m bs=64k count=48 2>/dev/null
echo "hello from the pcow guest" > /mnt/dir/sub/hello.txt
i=0; while [ $i -lt 50 ]; do echo "small $i" > /mnt/dir/s$i; i=$((i + 1)); done
(cd /mnt && find . -type f ! -name SUMS | sort | xargs md5sum) > /mnt/SUMS
sed 's/^/SUM /' /mnt/SUMS
sync
umount /mnt || fail umount
echo BOOT1-DONE
"""

BOOT2 = common.GUEST_PRELUDE + r"""
ndctl list -N | grep -q '"mode":"fsdax"' && echo MODE-FSDAX-KEPT
mount -o dax /dev/pmem0 /mnt || fail mount
grep ' /mnt ' /proc/mounts | grep -q dax && echo MOUNT-DAX
sed 's/^/SUM /' /mnt/SUMS
(cd /mnt && md5sum -c SUMS >/tmp/c.out 2>&1) && echo SUMS-OK || { cat /tmp/c.out; echo SUMS-BAD; }
echo more >> /mnt/dir/sub/hello.txt
rm /mnt/dir/s7
sync
umount /mnt || fail umount
e2fsck -fn /dev/pmem0 >/tmp/fsck.out 2>&1; rc=$?
echo "FSCK $rc"; [ $rc = 0 ] || cat /tmp/fsck.out
"""


def sums(out):
    return sorted(ln for ln in out.splitlines() if ln.startswith("SUM "))


def main():
    t = common.Test("guest-ext4")
    img = t.tmp / "fs.pcow"
    t.img("create", img, "256M")

    r = t.boot("1-mkfs", BOOT1, [img])
    out1 = r.output()
    t.check("MODE-FSDAX" in out1, "guest: namespace converted to fsdax")
    t.check("MOUNT-DAX" in out1, "guest: ext4 mounted with -o dax")
    s1 = sums(out1)
    t.check(len(s1) == 55 and "BOOT1-DONE" in out1,
            f"guest: 55 files written and summed ({len(s1)})")
    t.check_clean(img, "after boot 1")
    inf = t.info(img)
    t.note(f"image after mkfs + files: actual-size {inf['actual-size']}, "
           f"active-clusters {inf['format-specific']['data']['active-clusters']}")
    t.check(inf["actual-size"] < 64 * MiB,
            f"thin: {inf['actual-size']} bytes on disk for a 256 MiB device")

    r = t.boot("2-verify", BOOT2, [img])
    out2 = r.output()
    t.check("MODE-FSDAX-KEPT" in out2, "guest: fsdax namespace found again "
            "after reboot (pfn info block persisted)")
    t.check("MOUNT-DAX" in out2, "guest: remounted with -o dax")
    t.check("SUMS-OK" in out2, "guest: md5sum -c of all files passes after reboot")
    t.check(sums(out2) == s1 and s1, "guest: the md5 list equals boot 1's")
    t.check("FSCK 0" in out2, "guest: e2fsck -fn clean after more changes")
    t.check_clean(img, "after boot 2")
    t.finish()


if __name__ == "__main__":
    main()
